"""The Spark tasks of `prepare` on Spark (llm4trx.data.spark_prepare, which describes the whole): parsing a byte
range of a raw file with the embedded engine's per-block code into a scratch Parquet file (`parse_to_parquet`),
and writing a sorted partition as a part of data/events.parquet with the embedded engine's duplicate check and
row groups (`write_parts`). These functions run on the executors."""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from llm4trx.core.errors import DataError
from llm4trx.data import event_store, loaders, rawcsv
from llm4trx.data.chunks import regroup

ORDER = ["_file", "_chunk", "_row"]  # file order of a row: the stable sort's tie-breaker
ROW_GROUP = 1 << 20  # rows per Parquet row group, as the embedded writer (pyarrow's default)
BATCH_ROWS = 1 << 16  # rows per Arrow batch handed back to Spark


@dataclass
class RawFile:
    index: int
    path: str
    spec: loaders.EventFile
    header: bytes
    cuts: list[int]  # byte offsets: range i is [cuts[i], cuts[i + 1])


# Where a row's parse failed (kind of error, raw line, column, message): columns of every parsed part and of
# the per-chunk summary a parsing task returns.
ERROR_FIELDS = [("_kind", pa.int32()), ("_line", pa.int64()), ("_column", pa.string()), ("_error", pa.string())]
SUMMARY_SCHEMA = pa.schema(
    [("_file", pa.int32()), ("_chunk", pa.int32()), ("rows", pa.int64()), ("filled", pa.int64()), *ERROR_FIELDS]
)


def output_schema(categorical: list[str]) -> pa.Schema:
    fields = [("client_id", pa.string()), ("event_time", pa.int64()), ("amount", pa.float64()), ("mcc", pa.int32())]
    fields += [(name, pa.string()) for name in categorical]
    fields += [
        ("_target", pa.int64()),
        ("_filled", pa.int64()),
        ("_file", pa.int32()),
        ("_chunk", pa.int32()),
        ("_row", pa.int64()),
        *ERROR_FIELDS,
    ]
    return pa.schema(fields)


UTF8, PARSE = 0, 1  # error kinds: the embedded engine checks a whole file's encoding before parsing it


def parse_range(raw: RawFile, chunk: int, schema: pa.Schema):
    """Arrow batches of one byte range: canonical columns (strings, int64 ns times) plus file order, the
    per-row target and the fill count — or one error row. The checks are the embedded engine's own."""
    spec, path = raw.spec, Path(raw.path)
    start, end = raw.cuts[chunk], raw.cuts[chunk + 1]
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)

    def error(kind: int, message: str, column: str | None, line: int | None) -> pa.RecordBatch:
        values = {
            "_file": [raw.index],
            "_chunk": [chunk],
            "_kind": [kind],
            "_line": [line],
            "_column": [column],
            "_error": [message],
        }
        return pa.RecordBatch.from_arrays([pa.array(values.get(f.name, [None]), f.type) for f in schema], schema=schema)

    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        at = err.start
        line = data.count(b"\n", 0, at) + 2  # local numbering: the header is line 1
        yield error(
            UTF8,
            f"not valid UTF-8 (byte 0x{data[at]:02x} at offset {start + at}); re-encode the file as UTF-8",
            None,
            line,
        )
        return
    types = loaders.column_types(spec)
    text = raw.header + data
    try:
        try:
            table = pacsv.read_csv(
                io.BytesIO(text),
                read_options=pacsv.ReadOptions(use_threads=False),
                convert_options=pacsv.ConvertOptions(include_columns=list(types), column_types=types),
            )
        except pa.ArrowInvalid as err:
            rawcsv.locate_bad_row(path, text, len(rawcsv.header_of(path, raw.header)))
            rawcsv.locate_bad_value(path, text, types)
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(path, f"cannot parse as CSV: {first}") from None
        if table.num_rows == 0:
            return
        rawcsv.check_no_line_breaks(path, table)
        store, repairs = event_store.Events(list(spec.categorical)), Counter()
        block = loaders.read_block(path, table, spec, repairs, store, None, 0)
        target = None
        if spec.target:
            target = pa.array(rawcsv.require_present(path, table, spec.target).to_numpy(), pa.int64())
    except DataError as err:
        yield error(PARSE, err.message, err.column, err.row)
        return
    n = table.num_rows
    del table
    columns = {
        "event_time": pa.array(block["event_time"].view(np.int64)),
        "amount": pa.array(block["amount"], pa.float64()),
        "mcc": pa.array(block["mcc"], pa.int32()),
        "_target": target if target is not None else pa.nulls(n, pa.int64()),
        "_filled": pa.array(np.r_[repairs["categorical_filled"], np.zeros(n - 1, np.int64)]),
        "_file": pa.array(np.full(n, raw.index, np.int32)),
        "_chunk": pa.array(np.full(n, chunk, np.int32)),
        "_row": pa.array(np.arange(n, dtype=np.int64)),
    }
    for name, dictionary in store.dicts.items():
        columns[name] = pa.array(dictionary.values, pa.string()).take(pa.array(block[name]))
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema]
    yield from pa.Table.from_arrays(arrays, schema=schema).to_batches(max_chunksize=BATCH_ROWS)


def parse_to_parquet(raw: RawFile, chunk: int, schema: pa.Schema, scratch: str) -> dict:
    """parse_range's rows written to `scratch`/r<file>-<chunk>.parquet (Spark then reads them with its
    vectorized reader: no row-by-row conversion from Python); returns the range's summary (or its error)."""
    import pyarrow.parquet as pq

    summary = {
        "_file": raw.index,
        "_chunk": chunk,
        "rows": 0,
        "filled": 0,
        "_kind": None,
        "_line": None,
        "_column": None,
        "_error": None,
    }
    keep = [f for f in schema if f.name not in ("_filled", "_kind", "_line", "_column", "_error")]
    final = os.path.join(scratch, f"r{raw.index:03d}-{chunk:06d}.parquet")
    tmp = os.path.join(scratch, f".r{raw.index:03d}-{chunk:06d}.tmp-{os.getpid()}")
    writer = None
    try:
        for batch in parse_range(raw, chunk, schema):
            error = batch.column("_error")[0].as_py() if batch.num_rows == 1 else None
            if error is not None:
                summary.update({k: batch.column(k)[0].as_py() for k in ("_kind", "_line", "_column", "_error")})
                summary["rows"] = 0
                break
            summary["rows"] += batch.num_rows
            summary["filled"] += int(pc.sum(batch.column("_filled")).as_py() or 0)
            if writer is None:
                writer = pq.ParquetWriter(tmp, pa.schema(keep))
            writer.write_batch(pa.RecordBatch.from_arrays([batch.column(f.name) for f in keep], schema=pa.schema(keep)))
    finally:
        if writer is not None:
            writer.close()
    if writer is not None:
        if summary["_error"] is None:
            os.replace(tmp, final)
        else:
            os.remove(tmp)
    return summary


SEGMENT = 1 << 18  # sorted rows checked for duplicates at once (cut between (client, time) groups)


def duplicates_of(table: pa.Table) -> np.ndarray:
    """event_store.duplicated_rows on one sorted segment of whole (client, time) groups: rows equal in every column
    to an earlier row; only rows sharing client and time with a neighbour are compared in full."""
    n = table.num_rows
    dup = np.zeros(n, dtype=bool)
    if n < 2:
        return dup
    c, t = table.column("client_id"), table.column("event_time")
    tie = pc.equal(c.slice(1), c.slice(0, n - 1)).to_numpy(zero_copy_only=False) & pc.equal(
        t.slice(1), t.slice(0, n - 1)
    ).to_numpy(zero_copy_only=False)
    candidates = np.zeros(n, dtype=bool)
    candidates[1:] |= tie
    candidates[:-1] |= tie
    if candidates.any():
        idx = np.flatnonzero(candidates)
        dup[idx] = table.take(pa.array(idx)).to_pandas().duplicated().to_numpy()
    return dup


def write_parts(folder: str, schema: pa.Schema, drop_duplicates: bool):
    """mapInArrow function: this partition's rows (sorted) -> `folder`/part-<partition>.parquet, with the
    embedded engine's duplicate check (counted; dropped with dataset.drop_duplicates) and the MCC counts of
    the rows kept."""

    def write(batches):
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        ctx = TaskContext.get()
        part = ctx.partitionId()
        final = os.path.join(folder, f"part-{part:05d}.parquet")
        tmp = os.path.join(folder, f".part-{part:05d}.parquet.tmp-{ctx.taskAttemptId()}")
        writer, pending, held, rows, duplicates, mcc = None, [], 0, 0, 0, Counter()

        def flush():
            nonlocal pending, held
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP)
            pending, held = [], 0

        def checked(table: pa.Table) -> None:
            nonlocal duplicates
            dup = duplicates_of(table)
            duplicates += int(dup.sum())
            if drop_duplicates and dup.any():
                table = table.filter(pa.array(~dup))
            codes, counts = np.unique(table.column("mcc").to_numpy(), return_counts=True)
            mcc.update(dict(zip(codes.tolist(), counts.tolist())))
            add(table)

        def add(table: pa.Table) -> None:
            nonlocal writer, held, rows
            if writer is None and table.num_rows:
                writer = pq.ParquetWriter(tmp, schema)
            while table.num_rows:  # row groups of exactly ROW_GROUP rows, as the embedded writer
                take = min(ROW_GROUP - held, table.num_rows)
                pending.append(table.slice(0, take))
                held += take
                rows += take
                table = table.slice(take)
                if held == ROW_GROUP:
                    flush()

        try:
            tables = (
                pa.Table.from_arrays([b.column(f.name).cast(f.type) for f in schema], schema=schema)
                for b in batches
                if b.num_rows
            )
            for segment in regroup(tables, SEGMENT, ("client_id", "event_time")):  # duplicates never straddle a cut
                checked(segment)
            if writer is not None:
                flush()
                writer.close()
                os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        yield pa.RecordBatch.from_arrays(
            [
                pa.array([part], pa.int32()),
                pa.array([rows], pa.int64()),
                pa.array([duplicates], pa.int64()),
                pa.array([list(mcc)], pa.list_(pa.int64())),
                pa.array([list(mcc.values())], pa.list_(pa.int64())),
            ],
            names=["part", "rows", "duplicates", "mcc", "mcc_rows"],
        )

    return write
