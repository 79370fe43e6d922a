"""The CoLES val sweep of the CPU default: val metric (mean ± fold std) and CPU-seconds per configuration.

Each configuration is the reference (the smoke preset's CoLES before the sweep: GRU 64, 10 epochs, batch 64,
SampleSlices 5 x 15..60, no time features, no dropout) plus its overrides. For each, the real stages run as
subprocesses: `python -m llm4trx.coles` then `python -m llm4trx.validate validate.feature_sets=[coles]`, with
one prepared data folder reused (the raw files live under <output-root>/raw). Only val is read: choices are
made on val, never on test. CPU-seconds: user + system time of the coles process (import and start included),
at OMP_NUM_THREADS=1. Prints a markdown table with each row's ratio to the reference measured in the same run;
rows are appended to <output-root>/coles_sweep.jsonl as they finish (a rerun skips those done).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/coles_sweep.py --seed 12 --output-root /tmp/coles-sweep
    .venv/bin/python bench/coles_sweep.py --only ref,time   # a subset, by name
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TIME = "coles.time_features=[day_gap,hour,weekday,day_index]"  # categorical (binned, frequency codes)
TNUM = "coles.time_numeric=[day_gap,hour,day_index]"  # numeric (order kept)
REFERENCE = [
    "coles.hidden_size=64",
    "coles.max_epochs=10",
    "coles.batch_size=64",
    "coles.cnt_min=15",
    "coles.cnt_max=60",
    "coles.time_features=[]",
    "coles.time_numeric=[]",
    "coles.trx_dropout=0.0",
    "coles.encoder_type=gru",
    "coles.lr=0.002",
    "coles.lr_step_size=10",
    "coles.lr_step_gamma=0.9025",
]
CONFIGS = {
    "ref": [],
    "time": [TIME],
    "h128": ["coles.hidden_size=128"],
    "tnum": [TNUM],
    "tnum_drop": [TNUM, "coles.trx_dropout=0.01"],
    "tnum_h128": [TNUM, "coles.hidden_size=128"],
    "tnum_h128_drop": [TNUM, "coles.hidden_size=128", "coles.trx_dropout=0.01"],
    "tnum_h128_e15": [TNUM, "coles.hidden_size=128", "coles.max_epochs=15", "coles.cnt_max=100"],
    "time_drop": [TIME, "coles.trx_dropout=0.01"],
    "time_h128": [TIME, "coles.hidden_size=128"],
    "time_h256": [TIME, "coles.hidden_size=256"],
    "time_h128_lstm": [TIME, "coles.hidden_size=128", "coles.encoder_type=lstm"],
    "time_h128_e20": [TIME, "coles.hidden_size=128", "coles.max_epochs=20", "coles.lr_step_size=5"],
    "time_h128_cnt150": [TIME, "coles.hidden_size=128", "coles.cnt_max=150"],
    "time_h128_lr4": [
        TIME,
        "coles.hidden_size=128",
        "coles.lr=0.004",
        "coles.lr_step_size=3",
        "coles.lr_step_gamma=0.8",
    ],
    "time_h128_b128": [TIME, "coles.hidden_size=128", "coles.batch_size=128", "coles.max_epochs=15"],
}


def run_stage(stage: str, overrides: list[str]) -> float:
    """Run `python -m llm4trx.<stage>` and return its CPU-seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", f"llm4trx.{stage}", *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(name: str, extra: list[str], seed: int, root: Path) -> dict:
    base = [
        "experiment=smoke",
        f"paths.output_root={root}",
        f"experiment_name=sweep_{name}",
        f"seed={seed}",
        "progress=false",
    ]
    run_stage("prepare", base)  # reads the shared raw files: seconds
    started = time.time()
    cpu = run_stage("coles", [*base, *REFERENCE, *extra])
    wall = time.time() - started
    run_stage("validate", [*base, *REFERENCE, *extra, "validate.feature_sets=[coles]", "validate.concatenations=[]"])
    results = json.loads(
        (root / f"sweep_{name}" / "synthetic" / f"seed_{seed}" / "validation" / "results.json").read_text()
    )
    metric = results["metrics"][0]
    row = results["feature_sets"]["coles"][metric]
    return {
        "name": name,
        "overrides": extra,
        "metric": metric,
        "val_mean": row["val_mean"],
        "val_std": row["val_std"],
        "coles_cpu_s": cpu,
        "coles_wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--output-root", type=Path, default=Path("/tmp/coles-sweep"))
    parser.add_argument("--only", default=None, help="comma-separated configuration names (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    names = args.only.split(",") if args.only else list(CONFIGS)
    if "ref" not in names:
        names.insert(0, "ref")  # the ratios need the reference of the same run
    log = args.output_root / "coles_sweep.jsonl"
    args.output_root.mkdir(parents=True, exist_ok=True)
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            if r.get("seed") == args.seed:
                done[r["name"]] = r
    for name in names:
        if name not in done:
            row = {**measure(name, CONFIGS[name], args.seed, args.output_root), "seed": args.seed}
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[name] = row
            print(
                f"{name}: val {row['val_mean']:.4f} ± {row['val_std']:.4f}, {row['coles_cpu_s']:.0f} CPU-s", flush=True
            )
    ref = done["ref"]
    print(f"\nseed {args.seed}, val {ref['metric']} (mean ± std over 5 folds), CoLES CPU-s per seed at 1 thread")
    print("| config | overrides over the reference | val | Δ val vs ref | CoLES CPU-s | CPU ratio vs ref |")
    print("|---|---|---|---|---|---|")
    for name in names:
        r = done[name]
        print(
            f"| {name} | {' '.join(r['overrides']) or '(reference)'} | {r['val_mean']:.4f} ± {r['val_std']:.4f} "
            f"| {r['val_mean'] - ref['val_mean']:+.4f} | {r['coles_cpu_s']:.0f} "
            f"| {r['coles_cpu_s'] / ref['coles_cpu_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
