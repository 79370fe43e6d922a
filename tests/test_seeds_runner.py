"""scripts/run_multi_seed.sh's seeds runner (llm4trx/core/seeds_runner.py): the seeds forked from one process
that imported their stages' libraries once, the shared pass with the caller's threads, and failed seeds named.
The seeds' stages and outputs are checked end to end by the suite's shared smoke run (tests/test_pipeline.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llm4trx.core import seeds_runner, stage_runner
from pipeline_helpers import ROOT, child_env


def runner_arguments(stages: str, up_to_date: str = "", nproc: int = 1) -> list[str]:
    return ["--seed", "1", "--run-dir", "/r", "--stages", stages, "--up-to-date", up_to_date, "--nproc", str(nproc)]


def test_the_parent_imports_each_stage_a_seed_will_start_once(monkeypatch):
    imported = []
    monkeypatch.setattr(stage_runner, "preload", imported.append)
    settings = {
        "1": runner_arguments("prepare text pretrain export validate", up_to_date="prepare text"),
        "2": runner_arguments("prepare text pretrain export coles validate", up_to_date="prepare text"),
        "3": "stage 'validate' needs 'embed'",  # a seed whose settings failed starts nothing
    }
    seeds_runner.preload_for(settings, shared_pass=False)
    assert imported == ["pretrain", "export", "validate", "coles"]

    # While the shared pass builds the shared stages, the seeds will find them built: not imported for them.
    imported.clear()
    seeds_runner.preload_for({"1": runner_arguments("prepare text tokenizer pretrain baselines")}, shared_pass=True)
    assert imported == ["pretrain"]

    # NPROC > 1: pretrain and embed start through their launchers, as fresh processes.
    imported.clear()
    seeds_runner.preload_for({"1": runner_arguments("pretrain export embed", nproc=2)}, shared_pass=False)
    assert imported == ["export"]


@pytest.mark.parametrize("threads", ["", "3"])
def test_the_shared_pass_runs_with_the_callers_threads(monkeypatch, threads):
    """The seeds' share of the cores (OMP_NUM_THREADS of this process) is not the shared pass's: it gets the
    caller's setting, or none (every core)."""
    started = {}

    def popen(command, env):
        started.update(command=command, env=env)

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seeds_runner.start_shared_pass(["experiment=smoke", "seed=12"], "prepare text baselines", threads)
    assert started["command"][-3:] == [str(ROOT / "scripts" / "run.sh"), "experiment=smoke", "seed=12"]
    assert started["env"]["STAGES"] == "prepare text baselines"
    assert started["env"].get("OMP_NUM_THREADS") == (threads or None)


@pytest.mark.parametrize("switch", [{}, {"LLM4TRX_FORK_SEEDS": "0"}, {"LLM4TRX_FORK": "0"}])
def test_failed_seeds_fail_the_command_and_are_named(tmp_path, switch):
    """Forked (Linux), or as scripts/run.sh (LLM4TRX_FORK_SEEDS=0, LLM4TRX_FORK=0): a seed that cannot start (here: validate asked for
    on an empty output root) prints run.sh's one-line error; the command exits 1 and names every failed seed."""
    proc = subprocess.run(
        [sys.executable, "-m", "llm4trx.core.seeds_runner", "--seeds", "5 6 7", "--parallel", "2", "--"]
        + ["experiment=smoke", f"paths.output_root={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(STAGES="validate", OMP_NUM_THREADS="1", **switch),
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("error: stage 'validate' needs") == 3, proc.stderr
    assert "seeds 5 6 7 failed" in proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("===")] == [
        f"=== run_multi_seed.sh: seed {seed} (1 CPU threads)" for seed in (5, 6, 7)
    ]
    assert not any(tmp_path.rglob("_SUCCESS.json"))
