"""`prepare` on Apache Spark (engine=spark): the same raw file specs, checks, repairs and outputs as the embedded
engine (llm4trx.data.loaders), with the raw files parsed by many tasks and the sort done by Spark's shuffle.

How the work is split, and which code runs where:
- Driver: the file specs of the dataset's loader (`loaders.specs`), a cheap check of each file (exists, not
  empty, header has the columns: the same errors), and the cut of each file into byte ranges of
  `block_bytes` at line ends (a seek and a short read per cut).
- Tasks (mapInArrow over the ranges): each range is read with pyarrow with the file's header in front and goes
  through the embedded engine's own per-block code: `rawcsv` UTF-8/CSV/line-break checks and
  `loaders.read_block` (ids, times, amounts, MCCs, categoricals, fills) — one implementation of every check.
  Each task writes its rows (canonical columns + file order) as one Parquet file into a scratch folder of the
  stage's temporary build folder and returns a one-row summary; Spark reads the scratch files back with its
  vectorized reader (handing rows from Python to the JVM one by one cost most of the time). A task that meets
  bad input does not fail the job: its summary holds the error (kind, local line, column, message); the driver
  raises the first error in file order, with the line converted to the file's line.
- Spark SQL over the parsed rows: per-row targets (rosbank's target_flag: first row per client, conflicts),
  distinct categories, and the client table. Duplicates (rows equal in every column: counted, dropped with
  dataset.drop_duplicates) and the MCC counts of the ISO check are found in the sorted write tasks, as the
  embedded engine does after its sort (neighbours sharing client and time compared in full). The client table and the targets are small and go to the driver,
  where the split protocol (`splits.make_splits`) runs unchanged.
- Output: data/events.parquet is a DIRECTORY of parts `part-00000.parquet`, ... range-partitioned by client_id
  and sorted within each part by (client_id, event_time, file order), so the parts in file-name order are the
  embedded engine's single file row for row. Each part is written by pyarrow inside its task with the embedded
  file's exact schema and pandas metadata (Spark's own writer would store microsecond timestamps); a part is
  written to a temporary name and renamed, so a retried task leaves no partial file. The stage folder is the
  run_stage temporary folder, renamed into place when everything succeeded, so a failed job leaves nothing.
  On a cluster the stage folder must be on a filesystem the executors share (as the raw files must be).

Line numbers in errors are those of the embedded engine (1-based, header = line 1). When a file holds two
different errors, the first range holding one reports it (the embedded engine: the first streamed block), and
errors of the per-row target check come after the parse errors of the same file. A quoted value spanning lines
across a cut is reported at the cut rather than at the quote.

This module is the driver's part; the functions the tasks run are in llm4trx.data.spark_tasks.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from llm4trx.core.errors import DataError
from llm4trx.core.sections import DatasetSpec
from llm4trx.data import event_store, loaders, rawcsv
from llm4trx.data.spark_tasks import (
    ORDER,
    SUMMARY_SCHEMA,
    RawFile,
    output_schema,
    parse_to_parquet,
    write_parts,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ driver checks


def open_file(index: int, path: Path, spec: loaders.EventFile, block_bytes: int) -> RawFile:
    """The driver's checks of one raw file (missing, empty, header, columns: the embedded engine's errors)
    and its cut into ranges of about `block_bytes` that start at line starts."""
    if not path.is_file():
        raise rawcsv.missing_file(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        first = f.read(1 << 20)
        if size == 0 or (first.isspace() and _all_space(f)):
            raise DataError(path, "file is empty")
        end = first.find(b"\n")
        while end < 0 and len(first) < size:  # a header longer than the first read
            more = f.read(1 << 20)
            end = -1 if more.find(b"\n") < 0 else len(first) + more.find(b"\n")
            first += more
        header = first[: end + 1] if end >= 0 else first + b"\n"
        try:
            header.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                path,
                f"not valid UTF-8 (byte 0x{header[err.start]:02x} at offset {err.start}); re-encode the file as UTF-8",
                row=1,
            ) from None
        rawcsv.check_header(path, rawcsv.header_of(path, header), list(loaders.column_types(spec)))
        cuts = [min(len(header), size)]
        pos = cuts[0] + block_bytes
        while pos < size:
            f.seek(pos)
            nl, read = -1, 0
            while nl < 0:
                piece = f.read(1 << 16)
                if not piece:
                    break
                nl = piece.find(b"\n")
                read += len(piece) if nl < 0 else nl + 1
            nxt = pos + read
            if nl < 0 or nxt >= size:
                break
            cuts.append(nxt)
            pos = nxt + block_bytes
        cuts.append(size)
    return RawFile(index, str(path), spec, header, cuts)


def _all_space(f) -> bool:
    while True:
        piece = f.read(1 << 24)
        if not piece:
            return True
        if not piece.isspace():
            return False


def lines_before(path: str, offset: int) -> int:
    """Line breaks before byte `offset` (error path only: turns a range's local line into the file's)."""
    count, done = 0, 0
    with open(path, "rb") as f:
        while done < offset:
            piece = f.read(min(1 << 24, offset - done))
            if not piece:
                break
            count += piece.count(b"\n")
            done += len(piece)
    return count


# ------------------------------------------------------------------------------------------ the stage

REPAIRS_ORDER = (
    "categorical_filled",
    "duplicate_targets",
    "duplicate_events",
    "mcc_not_iso18245",
    "targets_without_events",
)  # the order the embedded engine counts them in (loaders.assemble)


class SparkEvents:
    """The parsed events on Spark: what prepare needs of event_store.Events (client_ids, len, write_parquet)."""

    def __init__(
        self,
        frame,
        clients: pd.Index,
        n_categories: dict[str, int],
        partitions: int,
        scratch: Path,
        ds: DatasetSpec,
        repairs: Counter,
    ):
        self.frame_, self.clients, self.n_events = frame, clients, None
        self.n_categories, self.partitions, self.scratch = n_categories, partitions, scratch
        self.ds, self.repairs = ds, repairs

    def __len__(self) -> int:
        if self.n_events is None:
            raise RuntimeError("the number of events is known once the events are written (duplicates)")
        return self.n_events

    def client_ids(self) -> pd.Index:
        return self.clients

    def write_parquet(self, path: Path, schema: pa.Schema) -> None:
        """`path` as a directory of parts in (client_id, event_time, file order), see the module docstring."""
        from pyspark.sql import functions as F

        schema = event_store.parquet_schema(schema, self.n_categories)
        path.mkdir()
        names = [f.name for f in schema]
        ranged = self.frame_.repartitionByRange(self.partitions, F.col("client_id"))
        ordered = ranged.sortWithinPartitions("client_id", "event_time", *ORDER).select(*names)
        clock = _Clock()
        drop = bool(self.ds.drop_duplicates)
        written = ordered.mapInArrow(
            write_parts(str(path), schema, drop),
            "part int, rows long, duplicates long, mcc array<long>, mcc_rows array<long>",
        ).collect()
        clock.lap("sorted, checked for duplicates and written")
        self.n_events = sum(r["rows"] for r in written)
        # check_events' repairs, in the embedded engine's order (they are known only now)
        found = Counter()
        duplicates = sum(r["duplicates"] for r in written)
        if duplicates:
            found["duplicate_events"] = duplicates
        if self.ds.mcc_names == "iso18245":
            unknown = sum(
                n for r in written for c, n in zip(r["mcc"], r["mcc_rows"]) if not loaders.is_iso18245(int(c))
            )
            if unknown:
                found["mcc_not_iso18245"] = unknown
        for what, count in found.items():
            log.warning("%s: %s = %d", self.ds.name, what, count)
        merged = {**self.repairs, **found}
        self.repairs.clear()
        for key in [k for k in REPAIRS_ORDER if k in merged] + [k for k in merged if k not in REPAIRS_ORDER]:
            self.repairs[key] = merged[key]
        log.info("events: %d parts, %d rows", sum(r["rows"] > 0 for r in written), self.n_events)
        shutil.rmtree(self.scratch, ignore_errors=True)


def load(
    spark, ds: DatasetSpec, scratch: Path, block_bytes: int | None = None, partitions: int | None = None
) -> loaders.Loaded:
    """loaders.load on Spark: the same checks, repairs (same counts, same order) and targets. The parsed rows
    go to `scratch` (a folder inside the stage's temporary build folder; removed once events are written).
    `block_bytes` and `partitions`: engine.spark's (null: the dataset's block_bytes, Spark's parallelism)."""
    from pyspark.sql import functions as F

    files, target_file = loaders.specs(ds)
    raw_dir = Path(ds.raw_dir)
    block_bytes = int(block_bytes or ds.block_bytes or rawcsv.BLOCK_BYTES)
    categorical = list(files[0].categorical)
    raws: list[RawFile] = []
    pending: DataError | None = None  # a file's own error, raised after the errors of the files before it
    for spec in files:
        path = raw_dir / spec.name
        if not spec.required and not path.exists():
            continue
        try:
            raws.append(open_file(len(raws), path, spec, block_bytes))
        except DataError as err:
            pending = err
            break
    schema = output_schema(categorical)
    ranges = [(raw.index, chunk) for raw in raws for chunk in range(len(raw.cuts) - 1)]
    by_index = {raw.index: raw for raw in raws}

    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)

    def parse(batches):
        for batch in batches:
            for index, chunk in zip(batch.column("file").to_pylist(), batch.column("chunk").to_pylist()):
                summary = parse_to_parquet(by_index[index], chunk, schema, str(scratch))
                yield pa.RecordBatch.from_pylist([summary], schema=SUMMARY_SCHEMA)

    spark_schema = _ddl(
        pa.schema([f for f in schema if f.name not in ("_filled", "_kind", "_line", "_column", "_error")])
    )
    clock = _Clock()
    repairs: Counter = Counter()
    parsed, per_file = None, {}
    if ranges:
        descriptors = spark.createDataFrame(pd.DataFrame(ranges, columns=["file", "chunk"]))
        summaries = descriptors.repartition(len(ranges)).mapInArrow(parse, _ddl(SUMMARY_SCHEMA)).toPandas()
        for index, rows in summaries.sort_values(["_file", "_chunk"]).groupby("_file", sort=True):
            bad = rows[rows["_error"].notna()].sort_values(["_kind", "_chunk"])
            per_file[int(index)] = {
                "rows": int(rows["rows"].sum()),
                "filled": int(rows["filled"].sum()),
                "err": None if bad.empty else bad.iloc[0].to_dict(),
            }
        clock.lap(f"parsed {len(ranges)} byte ranges")
        if any(summary["err"] is None and summary["rows"] for summary in per_file.values()):
            parsed = spark.read.schema(spark_schema).parquet(str(scratch))
    row_targets = []
    for raw in raws:
        summary = per_file.get(raw.index)
        if summary is not None and summary["err"] is not None:
            err = summary["err"]
            line = (
                None
                if pd.isna(err["_line"])
                else int(err["_line"]) - 1 + lines_before(raw.path, raw.cuts[int(err["_chunk"])])
            )
            raise DataError(raw.path, err["_error"], None if pd.isna(err["_column"]) else err["_column"], line)
        if summary is None or not summary["rows"]:
            raise DataError(raw.path, "file has a header but no data rows")
        if summary["filled"]:
            repairs["categorical_filled"] += int(summary["filled"])
        if raw.spec.target:
            row_targets.append(first_targets(parsed, raw))
    clock.lap("per-row targets")
    if pending is not None:
        raise pending
    good = parsed.drop("_target")
    if target_file is not None:
        targets = loaders.read_targets(raw_dir / target_file.name, target_file, repairs)
    else:
        targets = pd.concat(row_targets, ignore_index=True)
    loaders.check_target_values(ds, targets, raw_dir / (target_file.name if target_file else files[0].name))

    # check_events (duplicates, ISO 18245 MCCs) runs in the sorted write tasks: SparkEvents.write_parquet
    frame = good
    clients = (
        good.groupBy("client_id")
        .agg(F.min(F.struct(*ORDER)).alias("_first"))
        .select("client_id", *[F.col("_first")[k].alias(k) for k in ORDER])
        .toPandas()
    )
    clients = clients.sort_values(ORDER, kind="stable")["client_id"]  # in order of first appearance
    n_categories = {"client_id": len(clients)}
    if categorical:
        distinct = good.agg(*[F.countDistinct(name).alias(name) for name in categorical]).collect()[0]
        n_categories.update({name: int(distinct[name]) for name in categorical})
    clock.lap("clients and categories")
    targets = loaders.finish_targets(ds, targets, pd.Index(clients), repairs)
    partitions = int(partitions or spark.sparkContext.defaultParallelism)
    store = SparkEvents(
        frame, pd.Index(clients.to_numpy(dtype=object), dtype=object), n_categories, partitions, scratch, ds, repairs
    )
    return loaders.Loaded(store=store, targets=targets, repairs=repairs)


def first_targets(parsed, raw: RawFile) -> pd.DataFrame:
    """loaders.FirstTargets on Spark: each client's target is its first row's in the file; a later row with
    another value is an error at that row (the same message)."""
    from pyspark.sql import functions as F

    rows = parsed.filter(F.col("_file") == raw.index).select("client_id", "_target", "_chunk", "_row")
    first = rows.groupBy("client_id").agg(
        F.min(F.struct("_chunk", "_row", "_target")).alias("f"), (F.min("_target") != F.max("_target")).alias("mixed")
    )
    frame = first.select(
        "client_id",
        F.col("f._chunk").alias("c"),
        F.col("f._row").alias("r"),
        F.col("f._target").alias("target"),
        "mixed",
    ).toPandas()
    frame = frame.sort_values(["c", "r"], kind="stable")  # clients in order of first appearance
    if frame["mixed"].any():  # error path: find the first row whose target differs from its client's first
        conflict = (
            rows.join(first, "client_id")
            .filter(F.col("_target") != F.col("f._target"))
            .agg(
                F.min(
                    F.struct("_chunk", "_row", "client_id", F.col("f._chunk").alias("fc"), F.col("f._row").alias("fr"))
                ).alias("c")
            )
            .collect()[0]["c"]
        )

        def line(chunk, row):  # data row `row` of range `chunk` -> line of the file
            return int(row) + 1 + lines_before(raw.path, raw.cuts[chunk])

        raise DataError(
            raw.path,
            f"client {conflict['client_id']!r} has a different target than in its first row (line "
            f"{line(conflict['fc'], conflict['fr'])})",
            column=raw.spec.target,
            row=line(conflict["_chunk"], conflict["_row"]),
        )
    return pd.DataFrame(
        {"client_id": frame["client_id"].to_numpy(dtype=object), "target": frame["target"].astype(np.int64)}
    )


class _Clock:
    def __init__(self):
        import time

        self.time, self.last = time.perf_counter, time.perf_counter()

    def lap(self, what: str) -> None:
        now = self.time()
        log.info("spark prepare: %s in %.1f s", what, now - self.last)
        self.last = now


def _ddl(schema: pa.Schema) -> str:
    """Spark's DDL string of an Arrow schema (`name` type, ...)."""
    return ", ".join(f"`{f.name}` {_sql_type(f.type)}" for f in schema)


def _sql_type(t: pa.DataType) -> str:
    return {pa.string(): "string", pa.int64(): "bigint", pa.int32(): "int", pa.float64(): "double"}[t]
