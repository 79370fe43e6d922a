"""Composing the Hydra config outside an entry point (tests, notebooks, benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from llm4trx.core.schema import validate

# conf/ sits at the repository root, beside source/ (the package is installed editable by scripts/setup.sh).
REPO_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = str(REPO_ROOT / "conf")

# `${repo_root:}` in configs: files shipped with the repository (assets/) are found from any working directory.
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The root config with command-line style overrides, exactly as an entry point would see it: its declared
    choices and ranges checked (`core.schema`; a bad value is a ConfigError naming the key)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    validate(cfg)
    return cfg
