"""Every config in conf/ composes and resolves: each option of each group, and each experiment preset.

Options whose mandatory (`???`) keys name local paths get them from the test; any other missing key or a
broken interpolation fails. The deeper checks per stage (llm-foundry's own validation of every model x trainer
pair, vLLM config validation, SLURM launcher) live in the stage tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llm4trx.core.config import CONF_DIR, compose

CONF = Path(CONF_DIR)
# Bases that other options of their group extend (`defaults: [common]`); not choices on their own.
BASES = {"common"}
# Keys a user must set for these options (local paths, a custom schema): anything else missing is a defect.
MANDATORY = {
    ("dataset", "custom"): {
        "dataset.raw_dir",
        "dataset.id_column",
        "dataset.columns.time",
        "dataset.columns.amount",
        "dataset.columns.mcc",
        "dataset.targets.file",
        "dataset.targets.column",
    },
    ("model", "llama_3_2_1b"): {"model.pretrained_model_name_or_path"},
    ("model", "llama_3_2_3b"): {"model.pretrained_model_name_or_path"},
    ("model", "qwen2_5_1_5b"): {"model.pretrained_model_name_or_path"},
    ("tokenizer", "pretrained"): {"tokenizer.path"},
    **{
        ("experiment", name): {"model.pretrained_model_name_or_path"}  # real-data presets: a local checkpoint
        for name in ("llama_8xa100", "llama_rosbank", "llama_age_pred", "llama_gender")
    },
}


def group_options():
    for group_dir in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        group = group_dir.relative_to(CONF).as_posix()
        if group.startswith("hydra"):
            continue  # Hydra's own groups (launchers) are composed in their stage's tests
        for option in sorted(p.stem for p in group_dir.glob("*.yaml")):
            if option not in BASES:
                yield group, option


OPTIONS = list(group_options())


def test_every_group_of_the_design_is_there():
    groups = {g for g, _ in OPTIONS}
    assert {
        "dataset",
        "text",
        "tokenizer",
        "model",
        "trainer",
        "embed",
        "validate",
        "augment",
        "experiment",
        "finetune",
    } <= groups
    assert {o for g, o in OPTIONS if g == "text"} == {
        "flat",
        "compact",
        "grouped_mcc",
        "json",
        "yaml",
        "html",
        "markdown",
        "fields",
        "fields_recency",  # fields + the smoke preset's recency marks
    }
    assert {o for g, o in OPTIONS if g == "dataset"} >= {
        "synthetic",
        "rosbank",
        "age_pred",
        "gender",
        "age_pred_sample",
    }


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(tmp_path, group, option):
    cfg = compose([f"paths.output_root={tmp_path}", f"{group}={option}"])
    missing = set(OmegaConf.missing_keys(cfg))
    assert missing == MANDATORY.get((group, option), set())
    for key in missing:  # every mandatory key accepts a value and then everything resolves
        OmegaConf.update(cfg, key, str(tmp_path / "set-by-user"))
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert str(tmp_path) in cfg.paths.run_dir and cfg.paths.run_dir.endswith(f"seed_{cfg.seed}")


@pytest.mark.parametrize("experiment", [o for g, o in OPTIONS if g == "experiment"])
@pytest.mark.parametrize("dataset", ["synthetic", "age_pred_sample", "rosbank"])
def test_presets_leave_the_dataset_a_free_choice(tmp_path, experiment, dataset):
    cfg = compose([f"paths.output_root={tmp_path}", f"experiment={experiment}", f"dataset={dataset}"])
    assert cfg.dataset.name == dataset
    assert cfg.experiment_name != "default"  # presets name their run directory
    assert f"/{cfg.experiment_name}/{dataset}/" in cfg.paths.run_dir + "/"
    OmegaConf.to_container(cfg, resolve=True)


def test_command_line_overrides_reach_every_section(tmp_path):
    cfg = compose(
        [
            f"paths.output_root={tmp_path}",
            "experiment=smoke",
            "seed=7",
            "trainer.max_duration=50ba",
            "text=compact",
            "text.max_tokens=300",
            "dataset.n_clients=123",
        ]
    )
    assert (cfg.seed, cfg.trainer.max_duration, cfg.text.format, cfg.text.max_tokens, cfg.dataset.n_clients) == (
        7,
        "50ba",
        "compact",
        300,
        123,
    )
