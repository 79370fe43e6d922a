"""scripts/run.sh and scripts/run_multi_seed.sh end to end on a very small smoke configuration."""

from __future__ import annotations

import json
import os
import subprocess
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from llm4trx.core.config import compose
from llm4trx.core import registry
from llm4trx.core.registry import pipeline
from pipeline_helpers import ROOT, TINY, child_env, run_script, smoke_root

pytestmark = pytest.mark.slow

STAGES = pipeline(compose(TINY))  # the registry's pipeline for this config (coles before validate)
FEATURE_SETS = {"llm", "aggregates", "coles", "random"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return smoke_root(tmp_path_factory)


@pytest.fixture(scope="module")
def first_seed(root):
    proc = run_script("scripts/run.sh", *TINY, f"paths.output_root={root}", "seed=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def stage_lines(output: str, seed: int, word: str) -> list[str]:
    return re.findall(rf"run\.sh \[seed {seed}\] \d+/\d+ (\w+): {word}", output)


def test_run_sh_runs_every_stage_of_one_seed(root, first_seed):
    ran = stage_lines(first_seed.stdout, 1, "started")
    skipped = stage_lines(first_seed.stdout, 1, "up to date")
    assert ran + skipped == STAGES and "pretrain" in ran
    run_dir = root / "smoke" / "synthetic" / "seed_1"
    results = json.loads((run_dir / "validation" / "results.json").read_text())
    assert FEATURE_SETS <= set(results["feature_sets"])
    embeddings = pd.read_parquet(run_dir / "embeddings" / "embeddings.parquet")
    assert embeddings.columns[0] == "cl_id" and len(embeddings) > 0


def test_multi_seed_reuses_shared_stages_then_reports(root, first_seed):
    proc = run_script("scripts/run_multi_seed.sh", *TINY, f"paths.output_root={root}", env={"SEEDS": "1 2"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert stage_lines(proc.stdout, 1, "up to date") == STAGES  # seed 1 finished before
    assert stage_lines(proc.stdout, 2, "up to date") == ["prepare", "text", "tokenizer", "shards"]
    assert stage_lines(proc.stdout, 2, "started") == [s for s in STAGES if registry.get(s).scope == "seed"]
    report = root / "smoke" / "synthetic" / "report"
    assert proc.stdout.strip().splitlines()[-1].startswith(f"report: {report}/report.md")
    summary = json.loads((report / "report.json").read_text())["datasets"]["synthetic"]
    assert summary["seeds"] == [1, 2] and FEATURE_SETS <= set(summary["feature_sets"])
    table = (report / "report.md").read_text()
    for name in FEATURE_SETS:
        assert re.search(rf"\| \**{re.escape(name)}\** \| \d\.\d{{4}} ± \d\.\d{{4}} \|", table), name
    for png in ("metrics_synthetic.png", "loss_synthetic.png"):
        with Image.open(report / png) as image:
            assert image.size[0] > 600


def test_rerun_skips_every_stage_in_seconds(root, first_seed):
    run_script("scripts/run_multi_seed.sh", *TINY, f"paths.output_root={root}", env={"SEEDS": "1 2"})
    started = time.monotonic()
    proc = run_script("scripts/run_multi_seed.sh", *TINY, f"paths.output_root={root}", env={"SEEDS": "1 2"})
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in (1, 2):
        assert stage_lines(proc.stdout, seed, "up to date") == STAGES
        assert stage_lines(proc.stdout, seed, "started") == []
    # No stage process starts: config checks and the report only (seconds; generous for a loaded machine).
    assert elapsed < 60, elapsed


def test_two_seeds_started_together_build_each_shared_stage_once(tmp_path):
    """A SLURM array starts one pipeline per seed at the same moment on a fresh output root: each shared stage
    is built by exactly one of them (under its file lock); the other waits and finds it up to date.

    Only the shared stages run here: two pretrainings starting in the same instant on one machine can collide
    in mosaicml-streaming's shared-memory registration (a race inside streaming, not in the stage contract)."""
    root = tmp_path / "outputs"
    shared = [s for s in STAGES if registry.get(s).scope == "shared"]
    args = ["bash", "scripts/run.sh", *TINY, f"paths.output_root={root}"]
    env = child_env(STAGES=f"..{shared[-1]}")
    procs = [subprocess.Popen([*args, f"seed={seed}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for seed in (3, 4)]
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    logs = "\n".join(p.read_text() for p in (root / "smoke" / "synthetic" / "logs").rglob("*.log"))
    for stage in shared:
        assert len(re.findall(rf"\b{stage}: built ", logs)) == 1, (stage, logs[-3000:])
        assert (root / "smoke" / "synthetic" / "shared" / registry.get(stage).folder / "_SUCCESS.json").is_file()


def test_parallel_seeds_build_the_shared_stages_once_then_run_seeds_side_by_side(tmp_path):
    """run_multi_seed.sh parallel_seeds=2: the seed-independent stages once, then both seeds at once, each
    pretraining opening the same MDS shards at about the same moment (streaming's shared-memory registration
    is serialized by the llm4trx_text loader's lock), then one report over both."""
    root = tmp_path / "outputs"
    proc = run_script("scripts/run_multi_seed.sh", *TINY, f"paths.output_root={root}", "parallel_seeds=2",
                      env={"SEEDS": "5 6"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shared = [s for s in STAGES if registry.get(s).scope == "shared"]
    per_seed = [s for s in STAGES if registry.get(s).scope == "seed"]
    assert stage_lines(proc.stdout, 5, "started")[: len(shared)] == shared  # the shared pass, seed 5's label
    assert stage_lines(proc.stdout, 6, "started") == per_seed  # seed 6 found them built
    assert sorted(stage_lines(proc.stdout, 5, "started")[len(shared):]) == sorted(per_seed)
    for seed in (5, 6):
        assert stage_lines(proc.stdout, seed, "done").count("pretrain") == 1
        assert (root / "smoke" / "synthetic" / f"seed_{seed}" / "validation" / "_SUCCESS.json").is_file()
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert proc.stdout.count(f"({threads} CPU threads)") == 2  # the cores shared out between the two seeds
    summary = json.loads((root / "smoke" / "synthetic" / "report" / "report.json").read_text())
    assert summary["datasets"]["synthetic"]["seeds"] == [5, 6]
