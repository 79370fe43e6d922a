"""Shared fixtures. Tests run on CPU only; GPU tests carry the `gpu` marker and skip without CUDA."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The code under test is this checkout's, whatever checkout the environment's editable install points at
# (several worktrees may share one .venv); child processes (scripts, `python -c`) inherit it through PYTHONPATH.
SOURCE = str(Path(__file__).resolve().parents[1] / "source")
sys.path.insert(0, SOURCE)
os.environ["PYTHONPATH"] = os.pathsep.join([SOURCE, *filter(None, [os.environ.get("PYTHONPATH")])])

# Nothing may be fetched from a model or dataset hub during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU tests either way
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def out_root(tmp_path):
    """An empty `paths.output_root` for one test."""
    return tmp_path / "outputs"
