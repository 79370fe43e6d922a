"""Reading data/events.parquet (a file, or a directory of parquet parts) in bounded memory.

The prepare contract: events sorted by client_id, event_time. A directory's parts (another engine's output,
e.g. Spark's `part-00000-....parquet`) are read in file-name order, which must continue that global order.
`iter_batches` yields consecutive record batches; `iter_client_chunks` regroups them into chunks of about
`chunk_rows` rows cut at client boundaries (the last, possibly incomplete client of a chunk is carried into
the next one), so every chunk holds whole clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llm4trx.core import registry
from llm4trx.core.errors import DataError

BATCH_ROWS = 1 << 16


def events_path(data_dir: Path) -> Path:
    """The prepare stage's data/events.parquet (a file; with engine=spark a directory of sorted parts)."""
    return Path(data_dir) / registry.file("prepare", "events")


def read_events(data_dir: Path, columns: Sequence[str] | None = None, filters=None) -> pd.DataFrame:
    """The events in file order: only `columns` (a missing one names the part that lacks it; None: all), only
    the rows `filters` keeps (pyarrow's filter syntax)."""
    path = events_path(data_dir)
    if columns is not None:
        columns = list(dict.fromkeys(columns))
        check_event_columns(event_files(path), columns)
    return pd.read_parquet(path, columns=columns, filters=filters)


def event_files(path: Path) -> list[Path]:
    """[path] for a file; a directory's *.parquet parts in file-name order (hidden/underscore files skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix == ".parquet" and p.is_file() and not p.name.startswith((".", "_"))
        )
        if not files:
            raise DataError(path, "a directory without parquet parts (*.parquet)")
        return files
    raise DataError(path, "missing (written by the prepare stage)")


def check_event_columns(files: Sequence[Path], columns: Sequence[str]) -> int:
    """Every part has `columns`; returns the total number of rows (from the parquet footers)."""
    rows = 0
    for file in files:
        meta = pq.ParquetFile(file)
        names = meta.schema_arrow.names
        for col in columns:
            if col not in names:
                raise DataError(file, f"missing column (have {names})", column=col)
        rows += meta.metadata.num_rows
    return rows


def _normalised(batch: pa.RecordBatch) -> pa.Table:
    """client_id as strings (their text is what is sorted and rendered), large strings as strings."""
    table = pa.Table.from_batches([batch])
    for i, field in enumerate(table.schema):
        if field.name == "client_id" and not pa.types.is_string(field.type):
            table = table.set_column(i, "client_id", pc.cast(table.column(i), pa.string()))
        elif pa.types.is_large_string(field.type):
            table = table.set_column(i, field.name, pc.cast(table.column(i), pa.string()))
    return table


def iter_batches(files: Sequence[Path], columns: Sequence[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=list(columns)):
            if batch.num_rows:
                yield _normalised(batch)


def last_group_start(table: pa.Table, keys: Sequence[str] = ("client_id",)) -> int:
    """Index of the first row of the table's last group of equal `keys` (sorted: its rows are contiguous); 0
    when the whole table is one group."""
    same = None
    for key in keys:
        column = table.column(key)
        equal = pc.equal(column, column[-1]).to_numpy(zero_copy_only=False)
        same = equal if same is None else same & equal
    other = np.flatnonzero(~same)
    return int(other[-1]) + 1 if len(other) else 0


def regroup(tables: Iterable[pa.Table], min_rows: int, keys: Sequence[str] = ("client_id",)) -> Iterator[pa.Table]:
    """Consecutive tables sorted by `keys`, regrouped into tables of whole groups (clients; (client, time) for
    the duplicate check) of at least `min_rows` rows but the last: each is cut before its last group, which is
    carried into the next one; a group larger than min_rows is read whole."""
    pending: list[pa.Table] = []
    n = 0
    for table in tables:
        if not table.num_rows:
            continue
        pending.append(table)
        n += table.num_rows
        if n < min_rows:
            continue
        whole = pa.concat_tables(pending)
        cut = last_group_start(whole, keys)
        if cut == 0:  # one group so far: keep reading
            pending = [whole]
            continue
        yield whole.slice(0, cut)
        pending, n = [whole.slice(cut)], whole.num_rows - cut
    if n:
        yield pa.concat_tables(pending)


def iter_client_chunks(
    files: Sequence[Path], columns: Sequence[str], chunk_rows: int, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.Table]:
    """Tables of whole clients, each of at least `chunk_rows` rows (but the last) and at most chunk_rows +
    the rows of one client + a batch; a client larger than chunk_rows makes a chunk of its own."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    return regroup(iter_batches(files, columns, min(batch_rows, chunk_rows)), chunk_rows)


def to_frame(table: pa.Table) -> pd.DataFrame:
    """What the text stage renders: strings as pd.ArrowDtype(string) (zero-copy), client_id as str objects."""
    frame = table.to_pandas(types_mapper={pa.string(): pd.ArrowDtype(pa.string())}.get)
    frame["client_id"] = frame["client_id"].astype(str)
    return frame
