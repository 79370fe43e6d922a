"""Benchmark: prepare + text on the embedded engine and on Spark local mode, same synthetic data, same run.

    PYTHONPATH=source .venv/bin/python bench/spark_prepare_text.py                  # ~5M transactions
    PYTHONPATH=source .venv/bin/python bench/spark_prepare_text.py --clients 9000   # ~1M, quicker
    PYTHONPATH=source .venv/bin/python bench/spark_prepare_text.py --master 'local[8]' --partitions 16

The raw CSV (rosbank schema by default) is generated before any clock starts. Each engine runs the real stage
functions (`prepare.run`, `text.run`) on its own output root; the Spark session is started (JVM + Python workers)
before the clock too, and its start time is printed apart. Prints transactions per wall-clock second of
prepare + text for each engine and the ratio Spark / embedded, and checks that both engines wrote the same
texts (sha256 of train/val/test.jsonl and stats.json) and the same event count. Under a shared machine the
absolute figures are noisy: report the load (`uptime`) with them.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

from llm4trx import prepare, text
from llm4trx.core.config import compose
from llm4trx.core.spark import session
from llm4trx.core.stage import read_success
from llm4trx.data.synthetic import ensure_raw


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 24), b""):
            h.update(piece)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=45000, help="synthetic clients (45000: ~5M transactions)")
    parser.add_argument("--schema", default="rosbank", choices=["rosbank", "age_pred", "gender"])
    parser.add_argument("--min-events", type=int, default=20)
    parser.add_argument("--max-events", type=int, default=200)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--partitions", type=int, default=None, help="events.parquet parts / text partitions")
    parser.add_argument("--block-mb", type=int, default=32, help="raw CSV MiB per Spark input task")
    parser.add_argument("--root", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("llm4trx.render.spark_text").setLevel(logging.INFO)
    logging.getLogger("llm4trx.data.spark_prepare").setLevel(logging.INFO)

    root = Path(args.root or tempfile.mkdtemp(prefix="bench_spark_"))
    common = [
        f"dataset.schema={args.schema}",
        f"dataset.n_clients={args.clients}",
        f"dataset.min_events={args.min_events}",
        f"dataset.max_events={args.max_events}",
        f"dataset.raw_dir={root}/raw",
        "progress=false",
    ]
    spark_keys = [
        "engine=spark",
        f"engine.spark.master='{args.master}'",
        f"engine.spark.block_bytes={args.block_mb << 20}",
    ]
    if args.partitions:
        spark_keys.append(f"engine.spark.partitions={args.partitions}")
    cfgs = {
        "embedded": compose([f"paths.output_root={root}/embedded", *common]),
        "spark": compose([f"paths.output_root={root}/spark", *common, *spark_keys]),
    }
    started = time.perf_counter()
    ensure_raw(cfgs["embedded"].dataset)
    raw_mb = sum(p.stat().st_size for p in (root / "raw").glob("*.csv")) / 1e6
    print(f"raw files: {raw_mb:.0f} MB CSV ({time.perf_counter() - started:.0f} s to generate, not timed)")

    started = time.perf_counter()
    spark = session(cfgs["spark"])
    spark.range(4).mapInArrow(lambda batches: batches, "id long").count()  # Python workers up too
    spark_start = time.perf_counter() - started
    print(
        f"spark {spark.version} session ({spark.sparkContext.master}, parallelism "
        f"{spark.sparkContext.defaultParallelism}) started in {spark_start:.1f} s (not in the rates)"
    )

    results = {}
    for name in ("embedded", "spark"):
        cfg = cfgs[name]
        t0 = time.perf_counter()
        data = prepare.run(cfg)
        t1 = time.perf_counter()
        texts = text.run(cfg)
        t2 = time.perf_counter()
        n = read_success(data)["counts"]["events"]
        results[name] = {
            "events": n,
            "prepare": t1 - t0,
            "text": t2 - t1,
            "sha": {f: sha(texts / f) for f in ("train.jsonl", "val.jsonl", "test.jsonl", "stats.json")},
        }
        print(
            f"{name:>8}: {n:,} transactions; prepare {t1 - t0:6.1f} s ({n / (t1 - t0):,.0f}/s), text "
            f"{t2 - t1:6.1f} s ({n / (t2 - t1):,.0f}/s), prepare + text {n / (t2 - t0):,.0f} transactions/s"
        )
    e, s = results["embedded"], results["spark"]
    assert e["events"] == s["events"], "the engines wrote different event counts"
    assert e["sha"] == s["sha"], "the engines wrote different texts"
    print("same outputs: event count and sha256 of train/val/test.jsonl and stats.json")
    for stage in ("prepare", "text"):
        print(f"spark / embedded, {stage}: {e[stage] / s[stage]:.2f}x the rate")
    total = (e["prepare"] + e["text"]) / (s["prepare"] + s["text"])
    print(
        f"spark / embedded, prepare + text: {total:.2f}x the rate (cores: {os.cpu_count()}, load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
