"""Running the pipeline scripts from tests on a very small smoke configuration, shared by the test modules."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Few clients, few steps: one seed of the whole pipeline in about a minute on 2 cores.
TINY = [
    "experiment=smoke",
    "dataset.n_clients=300",
    "trainer.max_duration=10ba",
    "trainer.eval_interval=5ba",
    "trainer.save_interval=10ba",
    "coles.max_epochs=1",
    "progress=false",
]


def smoke_root(tmp_path_factory) -> Path:
    """One output root per test session: modules reuse each other's finished stages (scripts skip them)."""
    return tmp_path_factory.getbasetemp() / "smoke_outputs"


# Exported into os.environ by libraries run in-process by other tests (Composer, accelerate under the HF
# Trainer), and still needed there while torch.distributed stays initialised in the test process. A child
# process (run.sh, sbatch) that inherited them would take itself for one rank of a distributed job.
DISTRIBUTED_VARIABLES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
                         "MASTER_PORT"}


def child_env(**extra: str) -> dict[str, str]:
    """The test process's environment without distributed-launch variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES and not k.startswith("ACCELERATE_")}
    env.update(extra)
    return env


def run_script(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=child_env(**(env or {})))
