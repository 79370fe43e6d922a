"""Validation of the arguments before any stage runs (llm4trx.core.check) and the scripts' one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_helpers import child_env

from llm4trx.core import check
from llm4trx.core.config import compose
from llm4trx.core.stage import is_up_to_date, run_stage

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(capsys, argv) -> str:
    assert check.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["text=nope"], "unknown text 'nope': no such config in conf/text/; choose one of: "),
        (["dataset.bogus=1"], "unknown config key 'dataset.bogus'"),
        (["seed=abc"], "seed='abc' is not an integer"),
        (["seeds=[12,x]"], "seeds: 'x' not an integer"),
        (["seed=1,2"], "is a sweep"),
        (["seed=[1"], "cannot parse override 'seed=[1'"),
        (["-m", "seed=1"], "unknown option '-m'"),
    ],
)
def test_bad_arguments_are_one_clear_line(capsys, argv, says):
    assert says in one_error_line(capsys, argv)


def test_unknown_experiment_names_the_choices(capsys):
    err = one_error_line(capsys, ["experiment=no_such_experiment"])
    assert (
        err.startswith(
            "error: unknown experiment 'no_such_experiment': no such config in conf/experiment/; choose one of: "
        )
        and "smoke" in err
    )


def test_slurm_launcher_without_sbatch_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    assert "SLURM is not available on this machine (no `sbatch` on PATH)" in one_error_line(
        capsys, ["hydra/launcher=slurm"]
    )


def test_stage_asked_for_before_its_inputs_exist(capsys, monkeypatch, out_root):
    monkeypatch.setenv("STAGES", "embed")
    err = one_error_line(capsys, ["--shell", f"paths.output_root={out_root}"])
    assert "stage 'embed' needs 'prepare', which has not finished" in err and "STAGES=..export" in err


def test_shell_assignments_list_the_pipeline_and_what_is_up_to_date(capsys, monkeypatch, out_root):
    monkeypatch.delenv("STAGES", raising=False)
    monkeypatch.setenv("NPROC", "3")
    overrides = [f"paths.output_root={out_root}", "seed=5", "seeds=[5,6]"]
    cfg = compose(overrides)
    run_stage(cfg, "prepare", lambda tmp: None)
    assert check.main(["--shell", *overrides]) == 0
    values = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert values["STAGES"].strip("'").split()[:2] == ["prepare", "text"]
    assert values["UP_TO_DATE"] == "prepare"
    assert values["NPROC"] == "3" and values["SEED"] == "5" and values["SEEDS"] == "'5 6'"
    # run_multi_seed.sh builds these once before starting seeds side by side (parallel_seeds), when one must be
    # built: here everything after prepare
    assert values["SHARED_STAGES"] == "'prepare text tokenizer shards baselines'"
    assert values["SHARED_PENDING"] == "'text tokenizer shards baselines'"
    assert values["PARALLEL_SEEDS"] == str(cfg.parallel_seeds)
    assert values["RUN_DIR"] == str(out_root / "smoke" / "synthetic" / "seed_5")  # the default experiment


def test_a_stage_needs_only_what_it_reads(out_root):
    """STAGES=baselines runs once prepare (its only input) has finished, though pretrain..coles come before it in
    the pipeline; validate still needs everything it reads."""
    overrides = [f"paths.output_root={out_root}"]
    cfg = compose(overrides)
    with pytest.raises(check.StageInputMissing, match="stage 'baselines' needs 'prepare'"):
        check.requested_stages(cfg, "baselines")
    run_stage(cfg, "prepare", lambda tmp: None)
    assert check.requested_stages(cfg, "baselines") == ["baselines"]
    with pytest.raises(check.StageInputMissing, match="stage 'validate' needs 'text'"):  # via embed, export, ...
        check.requested_stages(cfg, "validate")


def test_the_runner_skips_a_shared_stage_another_process_finished(out_root):
    """A seed's run reaches baselines (after coles) once run_multi_seed.sh's shared pass or another seed has
    built it: it skips it without starting its process; one reaching it before (or any per-seed stage) starts it."""
    from llm4trx.core.stage_runner import finished_meanwhile

    overrides = [f"paths.output_root={out_root}", "seed=5"]
    cfg = compose(overrides)
    assert not finished_meanwhile("prepare", overrides)
    run_stage(cfg, "prepare", lambda tmp: None)
    assert finished_meanwhile("prepare", overrides)
    assert not finished_meanwhile("prepare", [*overrides, "dataset.seed=9"])  # another config: rebuilt
    run_stage(cfg, "coles", lambda tmp: None)
    assert is_up_to_date(cfg, "coles") and not finished_meanwhile("coles", overrides)  # per seed: its own run


@pytest.mark.parametrize("value", ["0", "two", "1.5"])
def test_parallel_seeds_must_be_a_positive_integer(capsys, out_root, value):
    err = one_error_line(capsys, ["--shell", f"paths.output_root={out_root}", f"parallel_seeds={value}"])
    assert err.startswith("error: parallel_seeds=") and "(seeds run at once)" in err


def test_up_to_date_follows_the_config_hash_of_the_stage(out_root):
    cfg = compose([f"paths.output_root={out_root}"])
    assert not is_up_to_date(cfg, "prepare")
    run_stage(cfg, "prepare", lambda tmp: None)
    run_stage(cfg, "text", lambda tmp: None)
    assert is_up_to_date(cfg, "prepare") and is_up_to_date(cfg, "text")
    assert check.leading_up_to_date(cfg, ["prepare", "text", "tokenizer"]) == ["prepare", "text"]
    text_changed = compose([f"paths.output_root={out_root}", "text.max_tokens=7"])
    assert is_up_to_date(text_changed, "prepare") and not is_up_to_date(text_changed, "text")
    # prepare is rebuilt first, so text cannot be skipped up front although its files match its recorded inputs.
    data_changed = compose([f"paths.output_root={out_root}", "dataset.seed=9"])
    assert not is_up_to_date(data_changed, "prepare")
    assert check.leading_up_to_date(data_changed, ["prepare", "text"]) == []
    assert not is_up_to_date(compose([f"paths.output_root={out_root}", "force=true"]), "prepare")


def run_script(args, env_extra=None):
    env = child_env(**(env_extra or {}))
    return subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)


def test_multi_seed_rejects_a_non_integer_seed_before_running_anything(out_root):
    proc = run_script(["scripts/run_multi_seed.sh", f"paths.output_root={out_root}"], {"SEEDS": "12 x1"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: seeds: 'x1' not an integer; give integers, e.g. seeds=[12,21,42] or SEEDS=\"12 21 42\""
    )
    assert not out_root.exists()


def test_run_sh_with_slurm_options_is_one_line(out_root):
    proc = run_script(["scripts/run.sh", f"paths.output_root={out_root}", "hydra/launcher=slurm"])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "hydra/launcher=slurm" in proc.stderr


def test_slurm_launcher_without_sbatch_exits_with_one_line(tmp_path):
    """`python -m llm4trx.<stage> -m hydra/launcher=slurm ...` where there is no SLURM at all."""
    env = child_env(PATH=str(Path(sys.executable).parent))
    env.pop("SLURM_CONF", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm4trx.report",
            "-m",
            "hydra/launcher=slurm",
            "seed=1,2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: hydra/launcher=slurm: SLURM is not available on this machine (no `sbatch` on PATH); drop "
        "hydra/launcher=slurm to run here, or submit from a SLURM login node"
    ]


def test_the_default_experiment_applies_unless_another_is_named():
    """`run_multi_seed.sh paths.output_root=X` runs the default (smoke) experiment, like no arguments at all."""
    assert compose([]).experiment_name == "smoke"
    assert compose(["paths.output_root=/tmp/x"]).experiment_name == "smoke"
    assert compose(["paths.output_root=/tmp/x"]).max_seq_len == compose([]).max_seq_len
    assert compose(["experiment=quality_cpu"]).experiment_name == "quality_cpu"
