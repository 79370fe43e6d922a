"""The loaded events as compact columns (the embedded engine's prepare): `Events` holds client and category
codes (`Dictionary`), int64 times, float64 amounts and int32 MCCs in file order (~24 bytes per transaction),
the permutation sorting them by client, time (`sort_order`) and the duplicates (`duplicated_rows`), and writes
the canonical events.parquet one row group at a time (`Events.write_parquet`, `parquet_schema`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

UNKNOWN = "unknown"  # the value of an empty categorical field


class Dictionary:
    """Strings -> int32 codes in order of first appearance (the order pyarrow's and pandas' encodings give),
    grown block by block; `fill` replaces empty strings (categorical columns: "unknown")."""

    def __init__(self, fill: str | None = None):
        self.code: dict[str, int] = {}
        self.values: list[str] = []
        self.fill = fill

    def add(self, value: str) -> int:
        code = self.code.get(value)
        if code is None:
            code = self.code[value] = len(self.values)
            self.values.append(value)
        return code

    def encode(self, col: pa.ChunkedArray) -> tuple[np.ndarray, int]:
        """Codes of the whitespace-trimmed strings of `col`, and how many were empty (replaced by `fill`)."""
        encoded = pc.dictionary_encode(pc.utf8_trim_whitespace(col).combine_chunks())
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        local = encoded.dictionary.to_pylist()
        empty = 0
        mapping = np.empty(len(local), dtype=np.int32)
        for i, value in enumerate(local):
            if value == "" and self.fill is not None:
                empty = int(np.count_nonzero(indices == i))
                value = self.fill
            mapping[i] = self.add(value)
        return mapping[indices], empty

    def categories(self) -> pd.Index:
        return pd.Index(np.array(self.values, dtype=object), dtype=object)


class Events:
    """A dataset's events as compact columns in file order, plus `order`: the rows sorted by client, time
    (duplicates left out when dropped). The canonical frame is `frame()`; `write_parquet` writes it in row
    groups without materialising it. Each file's columns are preallocated from its line count and filled
    block by block (no list of block arrays to concatenate: that doubled memory and fragmented the heap)."""

    DTYPES = {"client_id": np.int32, "event_time": "datetime64[ns]", "amount": np.float64, "mcc": np.int32}

    def __init__(self, categorical: list[str]):
        self.names = ["client_id", "event_time", "amount", "mcc", *categorical]
        self.dicts = {"client_id": Dictionary(), **{name: Dictionary(fill=UNKNOWN) for name in categorical}}
        self.files: list[dict[str, np.ndarray]] = []
        self.filled = 0
        self.columns: dict[str, np.ndarray] = {}
        self.order = np.zeros(0, dtype=np.int64)

    def begin_file(self, max_rows: int) -> None:
        self.files.append({name: np.empty(max_rows, dtype=self.DTYPES.get(name, np.int32)) for name in self.names})
        self.filled = 0

    def append(self, block: dict[str, np.ndarray]) -> None:
        current = self.files[-1]
        n = len(block["client_id"])
        if self.filled + n > len(current["client_id"]):  # more rows than lines: cannot happen; grow anyway
            for name in self.names:
                current[name] = np.concatenate([current[name][: self.filled], np.empty(n, current[name].dtype)])
        for name in self.names:
            current[name][self.filled : self.filled + n] = block[name]
        self.filled += n

    def end_file(self) -> None:
        self.files[-1] = {name: values[: self.filled] for name, values in self.files[-1].items()}

    def seal(self) -> None:
        """One array per column (files concatenated one column at a time: at most one column held twice)."""
        for name in self.names:
            parts = [f.pop(name) for f in self.files]
            self.columns[name] = np.concatenate(parts) if len(parts) != 1 else parts[0]
            del parts
        self.files = []

    def __len__(self) -> int:
        return len(self.order)

    def client_ids(self) -> pd.Index:
        """Every client with events, in order of first appearance."""
        return self.dicts["client_id"].categories()

    def frame(self, rows: np.ndarray | slice | None = None) -> pd.DataFrame:
        """The canonical events (sorted), or the sorted rows `rows` of them."""
        idx = self.order if rows is None else self.order[rows]
        out = {}
        for name in self.names:
            values = self.columns[name][idx]
            if name in self.dicts:
                values = pd.Categorical.from_codes(values, categories=self.dicts[name].categories())
            out[name] = values
        return pd.DataFrame(out)

    def write_parquet(self, path: Path, schema: pa.Schema, row_group: int = 1 << 20) -> None:
        """Byte for byte what pq.write_table(pa.Table.from_pandas(self.frame(), schema, preserve_index=False))
        writes (the same schema metadata and row groups of pyarrow's default 1Mi rows), one group at a time."""
        import pyarrow.parquet as pq

        schema = parquet_schema(schema, {name: len(d.values) for name, d in self.dicts.items()})
        strings = {name: pa.array(d.values, type=pa.string()) for name, d in self.dicts.items()}
        with pq.ParquetWriter(path, schema) as writer:
            for start in range(0, max(len(self), 1), row_group):
                idx = self.order[start : start + row_group]
                arrays = []
                for field in schema:
                    values = self.columns[field.name][idx]
                    if field.name in strings:
                        arrays.append(strings[field.name].take(pa.array(values)))
                    else:
                        arrays.append(pa.array(values, type=field.type))
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=row_group)


def parquet_schema(schema: pa.Schema, n_categories: dict[str, int]) -> pa.Schema:
    """`schema` with the pandas metadata that pa.Table.from_pandas(Events.frame(), schema) records: the string
    columns held as categoricals with `n_categories[name]` categories (their count and code width are in it)."""
    empty = {}
    for f in schema:
        if f.name in n_categories:
            cats = pd.Index(np.arange(n_categories[f.name]).astype(str).astype(object), dtype=object)
            empty[f.name] = pd.Categorical.from_codes(np.zeros(0, np.int64), categories=cats)
        else:
            empty[f.name] = np.zeros(0, dtype=Events.DTYPES.get(f.name, object))
    return pa.Table.from_pandas(pd.DataFrame(empty), schema=schema, preserve_index=False).schema


def sort_order(store: Events, step: int = 1 << 22) -> np.ndarray:
    """Row permutation sorting the events by client id (as strings), then time, stably. Temporaries are a
    few int64 columns (the combined key, the permutation); element-wise work runs in `step`-row slices."""
    categories = np.array(store.dicts["client_id"].values, dtype=object)
    rank = np.argsort(np.argsort(categories.astype(str), kind="stable"))  # lexicographic rank
    codes = store.columns["client_id"]
    time = store.columns["event_time"].view(np.int64)
    start = int(time.min())
    whole_seconds = all(not ((time[i : i + step] - start) % 1_000_000_000).any() for i in range(0, len(time), step))
    span = (int(time.max()) - start) // 1_000_000_000 + 1
    if whole_seconds and span * (len(rank) + 1) < 2**62:
        key = np.empty(len(time), dtype=np.int64)  # client rank * span + seconds: one sort on a combined key
        for i in range(0, len(time), step):
            part = rank[codes[i : i + step]].astype(np.int64)
            part *= span
            part += (time[i : i + step] - start) // 1_000_000_000
            key[i : i + step] = part
        return np.argsort(key, kind="stable")
    by_time = np.argsort(time, kind="stable")
    return by_time[np.argsort(rank[codes[by_time]], kind="stable")]


def duplicated_rows(store: Events, step: int = 1 << 18) -> np.ndarray:
    """Rows (in sorted order) equal in every column to an earlier row. Only rows sharing client and time with
    a neighbour can be duplicates, and only those are compared in full (pandas' DataFrame.duplicated on all
    rows factorizes every column: several times slower). Done in slices of about `step` sorted rows cut
    between (client, time) groups, so duplicates never straddle a cut and memory stays bounded."""
    n = len(store.order)
    dup = np.zeros(n, dtype=bool)
    codes, time = store.columns["client_id"], store.columns["event_time"]
    start = 0
    while start < n:
        stop = min(start + step, n)
        rows = store.order[start : stop + 1]  # one row more: is the cut inside a group?
        c, t = codes[rows], time[rows]
        tie = (c[1:] == c[:-1]) & (t[1:] == t[:-1])
        if stop < n:  # move the cut back to the start of the group that crosses it
            crossing = tie[-1]
            if crossing:
                last_break = np.flatnonzero(~tie)
                if len(last_break):
                    stop = start + int(last_break[-1]) + 1
                    tie = tie[: stop - start - 1]
                else:  # one group longer than step: take it whole
                    while stop < n and codes[store.order[stop]] == c[-1] and time[store.order[stop]] == t[-1]:
                        stop += 1
                    rows = store.order[start:stop]
                    c, t = codes[rows], time[rows]
                    tie = (c[1:] == c[:-1]) & (t[1:] == t[:-1])
            else:
                tie = tie[: stop - start - 1]
        else:
            tie = tie[: stop - start - 1]
        candidates = np.zeros(stop - start, dtype=bool)
        candidates[1:] |= tie
        candidates[:-1] |= tie
        if candidates.any():
            dup[start:stop][candidates] = store.frame(start + np.flatnonzero(candidates)).duplicated().to_numpy()
        start = stop
    return dup
