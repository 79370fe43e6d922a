"""scripts/run.sh and scripts/run_multi_seed.sh end to end on a very small smoke configuration."""

from __future__ import annotations

import json
import os
import subprocess
import re
import time

import pandas as pd
import pytest
from PIL import Image

from llm4trx.core.config import compose
from llm4trx.core import registry
from llm4trx.core.registry import pipeline
from pipeline_helpers import ROOT, SMOKE_RUN, SMOKE_SEEDS, TINY, child_env, run_script

pytestmark = pytest.mark.slow

STAGES = pipeline(compose(TINY))  # the registry's pipeline for this config (coles before validate)
FEATURE_SETS = {"llm", "aggregates", "coles", "random"}


def stage_lines(output: str, seed: int, word: str) -> list[str]:
    return re.findall(rf"run\.sh \[seed {seed}\] \d+/\d+ (\w+): {word}", output)


SHARED = [s for s in STAGES if registry.get(s).scope == "shared"]
PER_SEED = [s for s in STAGES if registry.get(s).scope == "seed"]

# One run of the pipeline serves the tests below (conftest's smoke_run): run_multi_seed.sh, seeds 1 and 2 side
# by side (parallel_seeds=2) on a fresh output root; each run.sh of it walks the registry's pipeline.


def test_run_sh_runs_every_stage_of_one_seed(smoke_run):
    first, second = SMOKE_SEEDS
    walked = {seed: stage_lines(smoke_run.stdout, seed, "(?:started|up to date)") for seed in SMOKE_SEEDS}
    # The first seed's label: the shared pass (run.sh STAGES=<the shared stages>), then its own run.sh; baselines,
    # after coles in the pipeline, is found built without starting its process.
    assert walked[first] == SHARED + STAGES and walked[second] == STAGES
    assert "pretrain" in stage_lines(smoke_run.stdout, second, "started")
    for seed in SMOKE_SEEDS:
        run_dir = smoke_run.root / "smoke" / "synthetic" / f"seed_{seed}"
        results = json.loads((run_dir / "validation" / "results.json").read_text())
        assert FEATURE_SETS <= set(results["feature_sets"])
        embeddings = pd.read_parquet(run_dir / "embeddings" / "embeddings.parquet")
        assert embeddings.columns[0] == "cl_id" and len(embeddings) > 0


def test_parallel_seeds_build_the_shared_stages_once_then_run_seeds_side_by_side(smoke_run):
    """run_multi_seed.sh parallel_seeds=2: the seed-independent stages once, then both seeds at once, each
    pretraining opening the same MDS shards at about the same moment (streaming's shared-memory registration
    is serialized by the llm4trx_text loader's lock), then one report over both. Every shared stage is built
    once."""
    first, second = SMOKE_SEEDS
    out = smoke_run.stdout
    assert stage_lines(out, first, "started")[: len(SHARED)] == SHARED  # the shared pass, the first seed's label
    assert stage_lines(out, second, "started") == PER_SEED  # the second seed found them built
    assert stage_lines(out, second, "up to date") == SHARED
    assert sorted(stage_lines(out, first, "started")[len(SHARED) :]) == sorted(PER_SEED)
    for stage in SHARED:  # built by one process, found built by the others
        assert len(re.findall(rf"run\.sh \[seed \d+\] \d+/\d+ {stage}: done", out)) == 1, stage
    for seed in (first, second):
        assert stage_lines(out, seed, "done").count("pretrain") == 1
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert out.count(f"({threads} CPU threads)") == 2  # the cores shared out between the two seeds


def test_multi_seed_reports_over_the_seeds(smoke_run):
    report = smoke_run.root / "smoke" / "synthetic" / "report"
    assert smoke_run.stdout.strip().splitlines()[-1].startswith(f"report: {report}/report.md")
    summary = json.loads((report / "report.json").read_text())["datasets"]["synthetic"]
    assert summary["seeds"] == list(SMOKE_SEEDS) and FEATURE_SETS <= set(summary["feature_sets"])
    table = (report / "report.md").read_text()
    for name in FEATURE_SETS:
        assert re.search(rf"\| \**{re.escape(name)}\** \| \d\.\d{{4}} ± \d\.\d{{4}} \|", table), name
    for png in ("metrics_synthetic.png", "loss_synthetic.png"):
        with Image.open(report / png) as image:
            assert image.size[0] > 600


def test_rerun_skips_every_stage_in_seconds(smoke_run):
    started = time.monotonic()
    proc = run_script(
        "scripts/run_multi_seed.sh",
        *SMOKE_RUN,
        f"paths.output_root={smoke_run.root}",
        env={"SEEDS": " ".join(map(str, SMOKE_SEEDS))},
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in SMOKE_SEEDS:
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
    env = child_env(STAGES=" ".join(shared))
    procs = [
        subprocess.Popen(
            [*args, f"seed={seed}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for seed in (3, 4)
    ]
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    logs = "\n".join(p.read_text() for p in (root / "smoke" / "synthetic" / "logs").rglob("*.log"))
    for stage in shared:
        assert len(re.findall(rf"\b{stage}: built ", logs)) == 1, (stage, logs[-3000:])
        assert (root / "smoke" / "synthetic" / "shared" / registry.get(stage).folder / "_SUCCESS.json").is_file()
