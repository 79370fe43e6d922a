"""Atomic, skippable stage folders (llm4trx.core.stage)."""

from __future__ import annotations

import json

import pytest

from llm4trx.core.config import compose
from llm4trx.core.errors import StageInputMissing
from llm4trx.core.stage import read_success, require, run_stage, stage_dir


def test_run_dirs_follow_the_contract(out_root):
    cfg = compose([f"paths.output_root={out_root}", "seed=7", "experiment_name=exp"])
    assert stage_dir(cfg, "prepare") == out_root / "exp" / cfg.dataset.name / "shared" / "data"
    assert stage_dir(cfg, "pretrain") == out_root / "exp" / cfg.dataset.name / "seed_7" / "checkpoints"


def test_stage_is_built_once_then_skipped_then_rebuilt_on_config_change(out_root):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "out.txt").write_text("x")
        return {"rows": 1}

    cfg = compose([f"paths.output_root={out_root}"])
    folder = run_stage(cfg, "prepare", build)
    assert (folder / "out.txt").read_text() == "x"
    assert read_success(folder)["counts"] == {"rows": 1}
    run_stage(cfg, "prepare", build)
    assert len(calls) == 1
    cfg2 = compose([f"paths.output_root={out_root}", "dataset.seed=123"])
    run_stage(cfg2, "prepare", build)
    assert len(calls) == 2
    cfg3 = compose([f"paths.output_root={out_root}", "dataset.seed=123", "force=true"])
    run_stage(cfg3, "prepare", build)
    assert len(calls) == 3


def test_failed_build_leaves_previous_output_and_no_temporary_folder(out_root):
    cfg = compose([f"paths.output_root={out_root}"])
    folder = run_stage(cfg, "prepare", lambda tmp: (tmp / "good.txt").write_text("ok") and None)

    def failing(tmp):
        (tmp / "partial.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stage(compose([f"paths.output_root={out_root}", "force=true"]), "prepare", failing)
    assert [p.name for p in folder.parent.iterdir() if ".tmp-" in p.name] == []
    assert (folder / "good.txt").exists() and not (folder / "partial.txt").exists()
    assert json.loads((folder / "_SUCCESS.json").read_text())["config_hash"]


def test_missing_input_stage_names_the_command(out_root):
    cfg = compose([f"paths.output_root={out_root}"])
    with pytest.raises(StageInputMissing, match=r"python -m llm4trx.prepare"):
        require(cfg, "prepare")
