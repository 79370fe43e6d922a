"""Stage `prepare`: raw files of `dataset` → data/events.parquet, data/targets.parquet, data/splits.parquet.

    python -m llm4trx.prepare                                   # synthetic (generated on first use)
    python -m llm4trx.prepare dataset=rosbank dataset.raw_dir=/data/rosbank

The synthetic dataset's raw files are generated into dataset.raw_dir first (reused when already there).
Raw CSV is streamed in blocks into compact columns and events.parquet is written one row group at a time
(see llm4trx.data.loaders: memory ~24 bytes per transaction plus the sort, not the raw text or a string table).
Everything is read and validated before the stage folder is written (see llm4trx.data.loaders for what counts
as an error and what as a logged repair; the repair counts land in data/_SUCCESS.json).
Changing the raw files without changing the config needs `force=true` to rebuild.

`engine=spark` (conf/engine/spark.yaml) reads the same files with the same checks on Apache Spark
(llm4trx.data.spark_prepare); events.parquet is then a directory of parts, sorted by client, time in file-name
order (pandas and pyarrow read it as one table). The outputs are the same, so the engine is not hashed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
from omegaconf import DictConfig

from llm4trx.data import loaders, synthetic
from llm4trx.core.cli import stage_main
from llm4trx.core.sections import DatasetSpec, SplitsSpec
from llm4trx.data.chunks import events_path
from llm4trx.data.splits import make_splits, write_splits, write_targets
from llm4trx.core.spark import engine_of, session
from llm4trx.core.stage import run_stage

log = logging.getLogger(__name__)

# What core/stage_runner.py imports before forking this stage, so that later stages inherit it (the splits'
# folds import scikit-learn lazily; baselines, validate and coles use it too).
PRELOAD = ("sklearn.model_selection",)


def events_schema(categorical) -> pa.Schema:
    fields = [
        pa.field("client_id", pa.string()),
        pa.field("event_time", pa.timestamp("ns")),
        pa.field("amount", pa.float64()),
        pa.field("mcc", pa.int32()),
    ]
    return pa.schema(fields + [pa.field(name, pa.string()) for name in categorical])


def build(cfg: DictConfig, out: Path) -> dict:
    started = time.perf_counter()
    ds = DatasetSpec.from_config(cfg.dataset)
    if ds.generator == "synthetic":
        synthetic.ensure_raw(ds)
    if engine_of(cfg) == "spark":  # the same specs, checks and outputs on Spark (events.parquet: a directory)
        from llm4trx.data import spark_prepare

        spark = cfg.engine.spark
        loaded = spark_prepare.load(
            session(cfg), ds, out / "spark-scratch", spark.get("block_bytes"), spark.get("partitions")
        )
    else:
        loaded = loaders.load(ds)
    seconds_load = time.perf_counter() - started
    events, targets = loaded.store, loaded.targets
    splits = make_splits(events.client_ids(), targets, SplitsSpec.from_config(cfg.splits))
    targets = targets.set_index("client_id").loc[splits.loc[splits["labeled"], "client_id"]].reset_index()

    # Written one row group at a time from compact columns: memory does not hold a sorted copy of the table.
    events.write_parquet(events_path(out), events_schema(ds.categorical))
    write_targets(out, targets)
    write_splits(out, splits)

    counts = {
        "events": len(events),
        "clients": len(splits),
        "labeled": int(splits["labeled"].sum()),
        "splits": {k: int(v) for k, v in splits["split"].value_counts().items()},
        "classes": {str(k): int(v) for k, v in targets["target"].value_counts().sort_index().items()},
        "repairs": dict(loaded.repairs),
        "load_seconds": round(seconds_load, 3),
    }
    log.info(
        "prepare %s: %d events, %d clients (%d labeled), splits %s, repairs %s",
        ds.name,
        counts["events"],
        counts["clients"],
        counts["labeled"],
        counts["splits"],
        counts["repairs"],
    )
    return counts


def run(cfg: DictConfig) -> Path:
    return run_stage(cfg, "prepare", lambda out: build(cfg, out))


def summary_line(c: dict, seconds: float, folder: Path) -> str:
    repairs = ", ".join(f"{k} {v}" for k, v in (c.get("repairs") or {}).items()) or "none"
    return f"{c['events']:,} events, {c['clients']:,} clients ({c['labeled']:,} labeled); repairs: {repairs}"


main = stage_main(run, summary_line)

if __name__ == "__main__":
    main()
