"""Pretraining throughput of the default (smoke) model: seeds side by side at 1 CPU thread each vs one seed
with every core, through the real stage (`python -m llm4trx.pretrain`, the way scripts/run.sh runs it).

The reference, measured in the same run: one seed alone with OMP_NUM_THREADS = all cores. Then `--parallel`
seeds at once with OMP_NUM_THREADS=1 (what `parallel_seeds` in run_multi_seed.sh does). Prints seconds and
tokens/s of each, and the throughput ratio (seeds trained per second, parallel / reference). The shared
stages (prepare, text, tokenizer, shards) are built first, outside the clock, in a temporary output root.

    PYTHONPATH=source .venv/bin/python bench/parallel_seeds.py [--batches 40] [--parallel 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage(name: str, overrides: list[str], threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "source")}
    return subprocess.Popen(
        [sys.executable, "-m", f"llm4trx.{name}", *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"stage failed (exit {proc.returncode}): {err[-2000:]}")


def tokens_seen(root: Path, seed: int) -> int:
    success = root / "smoke" / "synthetic" / f"seed_{seed}" / "checkpoints" / "_SUCCESS.json"
    return int(json.loads(success.read_text())["counts"]["tokens_seen"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=40, help="optimizer steps per seed")
    parser.add_argument("--parallel", type=int, default=2, help="seeds at once, 1 thread each")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        common = [
            f"paths.output_root={root}",
            "progress=false",
            f"trainer.max_duration={args.batches}ba",
            f"trainer.eval_interval={args.batches}ba",
            f"trainer.save_interval={args.batches}ba",
            "trainer.eval_first=false",
        ]
        for name in ("prepare", "text", "tokenizer", "shards"):
            finish([stage(name, common, cores)])

        started = time.perf_counter()
        finish([stage("pretrain", [*common, "seed=1000"], cores)])
        t_ref = time.perf_counter() - started
        seeds = [1001 + i for i in range(args.parallel)]
        started = time.perf_counter()
        finish([stage("pretrain", [*common, f"seed={seed}"], 1) for seed in seeds])
        t_par = time.perf_counter() - started

        tok_ref = tokens_seen(root, 1000)
        tok_par = sum(tokens_seen(root, seed) for seed in seeds)
    print(f"default model, {args.batches} batches per seed, {cores} cores (times include each process's start)")
    print(f"reference: 1 seed, {cores} threads            {t_ref:7.1f} s  {tok_ref / t_ref:8,.0f} tokens/s")
    print(f"{args.parallel} seeds at once, 1 thread each      {t_par:7.1f} s  {tok_par / t_par:8,.0f} tokens/s")
    print(f"ratio (throughput, parallel / reference): {(tok_par / t_par) / (tok_ref / t_ref):.2f}x")


if __name__ == "__main__":
    main()
