"""Composing the Hydra config outside an entry point (tests, notebooks, benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

# conf/ sits at the repository root, beside source/ (the package is installed editable by scripts/setup.sh).
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The root config with command-line style overrides, exactly as an entry point would see it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))
