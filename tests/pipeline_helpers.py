"""Running the pipeline scripts from tests on a very small smoke configuration, shared by the test modules."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Few clients, few steps: one seed of the whole pipeline in about a minute on 2 cores.
TINY = [
    "experiment=smoke",
    "dataset.n_clients=300",
    "trainer.max_duration=10ba",
    "trainer.eval_interval=5ba",
    "trainer.save_interval=10ba",
    "validate.coles.max_epochs=1",
    "progress=false",
]


def smoke_root(tmp_path_factory) -> Path:
    """One output root per test session: modules reuse each other's finished stages (scripts skip them)."""
    return tmp_path_factory.getbasetemp() / "smoke_outputs"


def run_script(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
