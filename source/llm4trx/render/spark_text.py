"""The `text` stage's rendering on Apache Spark (engine=spark): the same texts, written by many tasks.

The driver does what the embedded stage does before rendering (llm4trx.text.scan_events: the prepare contract
checks and the dataset-level RenderContext, a streamed pass over client_id, event_time and the categoricals;
the window ratio and line cap of the first chunk), so both engines render with the same context, ratio and
cap. Then Spark:
1. tasks read data/events.parquet (a file or a directory of parts) one row group each, with its position
   (row group index, row) — the file order, which is the (client_id, event_time) order;
2. the rows are range-partitioned by client_id and sorted within partitions by (client_id, position): each
   partition holds whole clients, in order, and partitions follow each other in client order;
3. each partition is rendered in chunks of about `text.chunk_events` events cut at client boundaries by the
   embedded engine's own `render_chunk`, and written as `<tmp>/<split>/part-<partition>.jsonl` with the same
   writer (`rows.to_json(..., lines=True)`); only the four stats integers per client come back to the driver;
4. the driver concatenates the parts of each split in partition order into `<out>/<split>.jsonl` (the
   contract stays one file per split) and removes the temporary folder.
A client's text depends only on its events, the context and the ratio, so the files equal the embedded
engine's byte for byte (tested). Mixing augmented texts (augment.mix) is not done on Spark.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llm4trx.data.chunks import regroup, to_frame
from llm4trx.data.splits import SPLITS
from llm4trx.data.text_files import text_path
from llm4trx.render.client_texts import TEXT_COLUMNS, TextStats, render_chunk

log = logging.getLogger(__name__)

STATS = list(TextStats.COLUMNS)


def _read_units(files: list[str], columns: list[str]):
    def read(batches):
        for batch in batches:
            for unit, file, group in zip(*(batch.column(c).to_pylist() for c in ("unit", "file", "group"))):
                table = pq.ParquetFile(file).read_row_group(group, columns=columns)
                if table.num_rows == 0:
                    continue
                if not pa.types.is_string(table.schema.field("client_id").type):
                    table = table.set_column(0, "client_id", table.column("client_id").cast(pa.string()))
                ns = table.column("event_time").cast(pa.timestamp("ns")).cast(pa.int64())
                table = table.set_column(1, "event_time", ns)
                for i, field in enumerate(table.schema):
                    if pa.types.is_large_string(field.type) or (i > 1 and pa.types.is_dictionary(field.type)):
                        table = table.set_column(i, field.name, table.column(i).cast(pa.string()))
                table = table.append_column("_unit", pa.array(np.full(table.num_rows, unit, np.int32)))
                table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
                yield from table.to_batches(max_chunksize=1 << 16)

    return read


def _render_parts(tmp: str, fmt, ctx, counter_name: str, budget, lookup: pd.Series, ratio, line_cap, chunk_events: int):
    def render(batches):
        from pyspark import TaskContext

        from llm4trx.render.tokencount import get_counter

        part = TaskContext.get().partitionId()
        counter = get_counter(counter_name)
        paths = {split: os.path.join(tmp, split, f"part-{part:05d}.jsonl") for split in SPLITS}
        stats = []

        def flush(tables):
            table = pa.concat_tables(tables)
            events = to_frame(table)
            events["event_time"] = events["event_time"].to_numpy().astype("datetime64[ns]")
            frame = render_chunk(events, fmt, ctx, counter, budget, lookup, ratio, line_cap)
            for split in SPLITS:
                rows = frame[frame["split"] == split]
                if len(rows):
                    rows[TEXT_COLUMNS].to_json(paths[split], orient="records", lines=True, force_ascii=False, mode="a")
            stats.append(frame[["split", *STATS]])

        tables = (pa.Table.from_batches([b]).drop_columns(["_unit", "_row"]) for b in batches if b.num_rows)
        for chunk in regroup(tables, chunk_events):  # whole clients, as the embedded engine's chunks
            flush([chunk])
        frame = pd.concat(stats, ignore_index=True) if stats else pd.DataFrame({"split": [], **{c: [] for c in STATS}})
        frame.insert(0, "part", part)
        yield pa.RecordBatch.from_pandas(
            frame.astype({"part": np.int32, "split": object, **{c: np.int64 for c in STATS}}), preserve_index=False
        )

    return render


def render(
    spark,
    files: list[Path],
    categorical: list[str],
    fmt,
    ctx,
    counter_name: str,
    budget,
    lookup: pd.Series,
    ratio,
    line_cap,
    chunk_events: int,
    out: Path,
    partitions: int | None = None,
) -> dict[str, TextStats]:
    """Write out/{split}.jsonl for every client of `files` (events.parquet's parts in order); returns the
    per-split TextStats (client order)."""
    units = [(file, group) for file in files for group in range(pq.ParquetFile(file).num_row_groups)]
    descriptors = spark.createDataFrame(
        pd.DataFrame(
            {
                "unit": np.arange(len(units), dtype=np.int32),
                "file": [str(f) for f, _ in units],
                "group": np.array([g for _, g in units], np.int32),
            }
        )
    )
    columns = ["client_id", "event_time", "amount", "mcc", *categorical]
    schema = ", ".join(
        [
            "client_id string",
            "event_time bigint",
            "amount double",
            "mcc int",
            *[f"`{c}` string" for c in categorical],
            "_unit int",
            "_row bigint",
        ]
    )
    rows = descriptors.repartition(max(len(units), 1)).mapInArrow(_read_units([str(f) for f in files], columns), schema)
    partitions = int(partitions or spark.sparkContext.defaultParallelism)
    ordered = rows.repartitionByRange(partitions, "client_id").sortWithinPartitions("client_id", "_unit", "_row")
    tmp = out / ".spark-parts"
    for split in SPLITS:
        (tmp / split).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    render_fn = _render_parts(str(tmp), fmt, ctx, counter_name, budget, lookup, ratio, line_cap, chunk_events)
    stats = ordered.mapInArrow(
        render_fn,
        "part int, split string, n_tokens bigint, n_events bigint, n_events_kept bigint, n_header_tokens bigint",
    ).toPandas()
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    copied = 0
    for split in SPLITS:
        parts = sorted((tmp / split).glob("part-*.jsonl"))
        if parts:
            with open(text_path(out, split), "wb") as target:
                for part in parts:
                    with open(part, "rb") as source:
                        shutil.copyfileobj(source, target, 1 << 24)
                    copied += part.stat().st_size
    shutil.rmtree(tmp)
    log.info(
        "spark text: rendered in %.1f s; %d parts concatenated (%.1f MB) in %.2f s",
        seconds,
        len(stats["part"].unique()) if len(stats) else 0,
        copied / 1e6,
        time.perf_counter() - started,
    )
    stats = stats.sort_values("part", kind="stable")
    per_split = {split: TextStats() for split in SPLITS}
    for split in SPLITS:
        per_split[split].add(stats[stats["split"] == split])
    return per_split
