"""Raw dataset files → canonical events and targets, one loader per raw schema (registry `LOADERS`).

Every loader describes its schema as `EventFile`/`TargetFile` specs (file names, column names, how the time
is written) and hands them to the same reading code, so the real datasets and the generic loader
(`dataset.loader=generic`, a column mapping in the config) share every check.

Memory: event files are read in blocks (rawcsv.CsvBlocks) into compact columns (client and category codes,
int64 times, float64 amounts, int32 MCCs: ~24 bytes per transaction), sorted once by a permutation, and
written as Parquet row groups one at a time (`Events.write_parquet`), so the raw text, a string column per
row or a sorted copy of the whole table are never held. With several blocks, the first block holding a bad
value reports it (a whole-file read reported the first bad value of the first failing check).

Bad input — what happens (errors are `DataError`s naming file, column and 1-based line incl. header; they
are raised before anything is written):

| input                                          | decision                                                   |
|------------------------------------------------|------------------------------------------------------------|
| missing file                                   | error (suggests a close file name in the folder)           |
| missing / misspelled column                    | error (suggests the close column name, difflib)            |
| unparsable date / time                         | error at the first bad line                                |
| amount empty, NaN, inf or non-numeric          | error at the first bad line                                |
| MCC / category code not an integer or negative | error at the first bad line                                |
| MCC integer but not in ISO 18245 (mcc_names: iso18245) | repair: kept, counted as `mcc_not_iso18245`, logged |
| empty client id                                | error                                                      |
| empty categorical value                        | repair: set to "unknown", counted as `categorical_filled`  |
| duplicate event rows (all fields equal)        | counted as `duplicate_events`, logged; kept unless `dataset.drop_duplicates: true` (real data at day resolution has legitimate repeats) |
| duplicate target rows, same target             | repair: deduplicated, counted as `duplicate_targets`       |
| same client with two different targets        | error                                                      |
| target value missing, non-integer or outside [0, n_classes) | error                                         |
| target ids without transactions (client with no transactions) | repair: dropped, counted as `targets_without_events`, logged (as ptls does) |
| empty file, header only                        | error                                                      |
| non-UTF-8 bytes                                | error naming the line                                      |
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from llm4trx.data import rawcsv
from llm4trx.data.event_store import Dictionary, Events, duplicated_rows, sort_order
from llm4trx.core.errors import ConfigError, DataError
from llm4trx.core.sections import DatasetSpec

log = logging.getLogger(__name__)


@dataclass
class EventFile:
    """One raw transactions file and how its columns map to the canonical events."""

    name: str
    id: str
    time: str
    amount: str
    mcc: str
    time_format: str  # a strftime format | "days" (integer day index) | "day_time" ('D HH:MM:SS') | "unix" (seconds)
    time_origin: str | None = None  # day 0 for "days" / "day_time"
    categorical: dict[str, str] = field(default_factory=dict)  # canonical name -> raw column
    required: bool = True
    target: str | None = None  # a per-row target column in this file (rosbank's target_flag)


@dataclass
class TargetFile:
    name: str
    id: str
    target: str


@dataclass
class Loaded:
    store: Events  # canonical columns, sorted by client_id, event_time (see Events)
    targets: pd.DataFrame  # client_id, target (only clients with events)
    repairs: Counter

    @functools.cached_property
    def events(self) -> pd.DataFrame:
        """The canonical events as one DataFrame (materialised on first use: prepare writes without it)."""
        return self.store.frame()


# loader name (dataset.loader) -> function(dataset section) -> (event file specs, target file spec or None).
# A plain dict: the loaders are this module's own functions and llm-foundry's catalogue registries would add an
# import of the whole stack. `assemble` reads the specs in this process; llm4trx.data.spark_prepare reads the
# same specs on Spark (engine=spark) with the same per-block code (`read_block`).
LOADERS: dict[str, Callable[[DatasetSpec], tuple[list["EventFile"], "TargetFile | None"]]] = {}


def register(name: str):
    def add(fn):
        LOADERS[name] = fn
        return fn

    return add


def load(ds: DatasetSpec) -> Loaded:
    """Canonical events and targets of the dataset described by the `dataset` config section."""
    return assemble(ds, *specs(ds))


def specs(ds: DatasetSpec) -> tuple[list[EventFile], TargetFile | None]:
    """The raw files of the dataset (checked: mandatory keys set, a known loader, raw_dir a folder)."""
    missing = list(ds.missing)
    if missing:
        names = [k if k.startswith("dataset.") else f"dataset.{k}" for k in missing]  # relative to the root or not
        raise ConfigError("set the mandatory dataset keys: " + ", ".join(names))
    raw_dir = Path(ds.raw_dir)
    if not raw_dir.is_dir():
        fetch = f", or fetch it: python -m llm4trx.download dataset={ds.name}" if ds.download else ""
        raise DataError(raw_dir, f"dataset.raw_dir is not a folder (set dataset.raw_dir or LLM4TRX_DATA_DIR{fetch})")
    return LOADERS[ds.loader](ds)


@register("rosbank")
def load_rosbank(ds: DatasetSpec) -> Loaded:
    """train.csv (labeled, target_flag per row) + optional test.csv (unlabeled); TRDATETIME like 21OCT17:00:00:00."""
    cats = {name: name for name in ("channel_type", "currency", "trx_category") if name in ds.categorical}
    common = dict(
        id="cl_id", time="TRDATETIME", amount="amount", mcc="MCC", time_format="%d%b%y:%H:%M:%S", categorical=cats
    )
    return [
        EventFile("train.csv", target="target_flag", **common),
        EventFile("test.csv", required=False, **common),
    ], None


@register("age_pred")
def load_age_pred(ds: DatasetSpec) -> Loaded:
    """transactions_train.csv (+ optional transactions_test.csv), targets train_target.csv (bins, 4 classes).

    trans_date is an anonymized day index: dates count from dataset.time_origin; small_group is an anonymous
    category code, stored as the canonical `mcc` (dataset.mcc_names: null)."""
    common = dict(id="client_id", time="trans_date", amount="amount_rur", mcc="small_group", time_format="days")
    files = [
        EventFile("transactions_train.csv", time_origin=ds.time_origin, **common),
        EventFile("transactions_test.csv", required=False, time_origin=ds.time_origin, **common),
    ]
    return files, TargetFile("train_target.csv", id="client_id", target="bins")


@register("gender")
def load_gender(ds: DatasetSpec) -> Loaded:
    """transactions.csv (tr_datetime 'D HH:MM:SS' from dataset.time_origin), targets gender_train.csv."""
    cats = {name: name for name in ("tr_type", "term_id") if name in ds.categorical}
    columns = dict(id="customer_id", time="tr_datetime", amount="amount", mcc="mcc_code", time_format="day_time")
    files = [EventFile("transactions.csv", time_origin=ds.time_origin, categorical=cats, **columns)]
    return files, TargetFile("gender_train.csv", id="customer_id", target="gender")


@register("generic")
def load_generic(ds: DatasetSpec) -> Loaded:
    """Anyone's own data: files and column names from the config (see conf/dataset/custom.yaml)."""
    col = ds.columns
    files = [
        EventFile(
            name,
            id=ds.id_column,
            time=col["time"],
            amount=col["amount"],
            mcc=col["mcc"],
            time_format=ds.time_format,
            time_origin=ds.time_origin,
            categorical={c: c for c in ds.categorical},
            target=ds.targets["column"] if ds.targets.get("file") is None else None,
        )
        for name in ds.transactions
    ]
    targets = (
        None
        if ds.targets.get("file") is None
        else TargetFile(ds.targets["file"], id=ds.id_column, target=ds.targets["column"])
    )
    return files, targets


def assemble(ds: DatasetSpec, files: list[EventFile], target_file: TargetFile | None) -> Loaded:
    raw_dir = Path(ds.raw_dir)
    repairs: Counter = Counter()
    store = Events(list(files[0].categorical))
    row_targets = []
    for spec in files:
        path = raw_dir / spec.name
        if not spec.required and not path.exists():
            continue
        targets = read_event_file(path, spec, repairs, store, int(ds.block_bytes or rawcsv.BLOCK_BYTES))
        if targets is not None:
            row_targets.append(targets)
    store.seal()
    if target_file is not None:
        targets = read_targets(raw_dir / target_file.name, target_file, repairs)
    else:
        targets = pd.concat(row_targets, ignore_index=True)
    check_target_values(ds, targets, raw_dir / (target_file.name if target_file else files[0].name))
    check_events(ds, store, repairs)
    targets = finish_targets(ds, targets, store.client_ids(), repairs)
    return Loaded(store=store, targets=targets, repairs=repairs)


def finish_targets(ds: DatasetSpec, targets: pd.DataFrame, known, repairs: Counter) -> pd.DataFrame:
    """Drop the targets of clients without events (counted), log every repair; the targets that remain."""
    without = ~targets["client_id"].isin(known)
    if without.any():
        repairs["targets_without_events"] += int(without.sum())
        targets = targets[~without].reset_index(drop=True)
    for what, count in sorted(repairs.items()):
        if count:
            log.warning("%s: %s = %d", ds.name, what, count)
    return targets


def read_event_file(
    path: Path, spec: EventFile, repairs: Counter, store: Events, block_bytes: int = rawcsv.BLOCK_BYTES
) -> pd.DataFrame | None:
    """Append the events of one raw file to `store`, block by block; returns its per-row targets (if any)."""
    types = column_types(spec)
    first = FirstTargets() if spec.target else None
    blocks = rawcsv.CsvBlocks(path, types, block_bytes=block_bytes)
    store.begin_file(blocks.max_rows)
    for first_row, table in blocks:
        try:
            store.append(read_block(path, table, spec, repairs, store, first, first_row))
        except DataError as err:  # rows of the block -> lines of the file
            raise DataError(
                err.path, err.message, err.column, None if err.row is None else err.row + first_row
            ) from None
        del table
        pa.default_memory_pool().release_unused()  # give the block's buffers back now, not at jemalloc's leisure
    store.end_file()
    return first.frame(store.dicts["client_id"]) if first is not None else None


def column_types(spec: EventFile) -> dict[str, pa.DataType]:
    """The raw columns read from an event file and the types pyarrow converts them to."""
    time_type = pa.int64() if spec.time_format in ("days", "unix") else pa.string()
    types = {spec.id: pa.string(), spec.time: time_type, spec.amount: pa.float64(), spec.mcc: pa.int64()}
    types.update({raw: pa.string() for raw in spec.categorical.values()})
    if spec.target:
        types[spec.target] = pa.int64()
    return types


class FirstTargets:
    """Per-row targets (rosbank's target_flag) checked against each client's first row in the file."""

    def __init__(self):
        self.value = np.zeros(0, dtype=np.int64)
        self.line = np.full(0, -1, dtype=np.int64)  # 0-based data row of the client's first row; -1: unseen
        self.clients: list[np.ndarray] = []  # codes in order of first appearance

    def check(self, path: Path, column: str, codes: np.ndarray, values: np.ndarray, first_row: int, ids) -> None:
        if len(self.line) < int(codes.max()) + 1:
            grow = int(codes.max()) + 1 - len(self.line)
            self.value = np.concatenate([self.value, np.zeros(grow, dtype=np.int64)])
            self.line = np.concatenate([self.line, np.full(grow, -1, dtype=np.int64)])
        uniq, at = np.unique(codes, return_index=True)
        new = self.line[uniq] < 0
        uniq, at = uniq[new], at[new]
        by_row = np.argsort(at, kind="stable")
        uniq, at = uniq[by_row], at[by_row]
        self.value[uniq] = values[at]
        self.line[uniq] = first_row + at
        self.clients.append(uniq)
        bad = rawcsv.first_true(values != self.value[codes])
        if bad is not None:
            raise DataError(
                path,
                f"client {ids[bad]!r} has a different target than in its first row (line "
                f"{rawcsv.line_of(self.line[codes[bad]])})",
                column=column,
                row=rawcsv.line_of(bad),
            )

    def frame(self, clients: Dictionary) -> pd.DataFrame:
        codes = np.concatenate(self.clients) if self.clients else np.zeros(0, dtype=np.int64)
        names = np.array(clients.values, dtype=object)
        return pd.DataFrame({"client_id": names[codes], "target": self.value[codes]})


def read_block(
    path: Path,
    table: pa.Table,
    spec: EventFile,
    repairs: Counter,
    store: Events,
    first: FirstTargets | None,
    first_row: int,
) -> dict[str, np.ndarray]:
    """Compact columns of one block (rows numbered from the block's start: the caller shifts errors)."""
    ids = rawcsv.require_present(path, table, spec.id)
    mcc = rawcsv.require_present(path, table, spec.mcc).to_numpy()
    bad = rawcsv.first_true((mcc < 0) | (mcc > np.iinfo(np.int32).max))
    if bad is not None:
        raise DataError(path, f"category code {mcc[bad]} is out of range", column=spec.mcc, row=rawcsv.line_of(bad))
    codes, _ = store.dicts["client_id"].encode(ids)
    block = {
        "client_id": codes,
        "event_time": parse_time(path, table, spec),
        "amount": rawcsv.require_finite(path, table, spec.amount),
        "mcc": mcc.astype(np.int32),
    }
    for canonical, raw in spec.categorical.items():
        block[canonical], empty = store.dicts[canonical].encode(table.column(raw))
        if empty:
            repairs["categorical_filled"] += empty
    if first is not None:
        values = rawcsv.require_present(path, table, spec.target).to_numpy()
        trimmed = pc.utf8_trim_whitespace(ids)
        first.check(path, spec.target, codes, values, first_row, _Lazy(trimmed))
    return block


class _Lazy:
    """Index into a pyarrow column only when an error message needs a value."""

    def __init__(self, col):
        self.col = col

    def __getitem__(self, i):
        return self.col[int(i)].as_py()


def parse_time(path: Path, table: pa.Table, spec: EventFile) -> np.ndarray:
    col = rawcsv.require_present(path, table, spec.time)
    if spec.time_format == "days":
        return rawcsv.days_since(path, col.to_numpy(), spec.time, origin_of(spec))
    if spec.time_format == "day_time":
        return rawcsv.parse_day_time(path, col, spec.time, origin_of(spec))
    if spec.time_format == "unix":
        return col.to_numpy().astype("datetime64[s]").astype("datetime64[ns]")
    return rawcsv.parse_datetime_strings(path, col, spec.time, spec.time_format)


def origin_of(spec: EventFile) -> str:
    if not spec.time_origin:
        raise ConfigError(f"dataset.time_origin must be set: {spec.name} counts time in days from an origin date")
    return spec.time_origin


def to_int_targets(path: Path, column: str, frame: pd.DataFrame) -> pd.DataFrame:
    value = pd.to_numeric(frame["target"], errors="coerce")
    bad = value.isna() | (value != np.floor(value.fillna(0)))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            path,
            f"target {frame['target'].iloc[i]!r} is not an integer class",
            column=column,
            row=rawcsv.line_of(frame.index[i]),
        )
    return pd.DataFrame({"client_id": frame["client_id"].to_numpy(), "target": value.astype(np.int64).to_numpy()})


def read_targets(path: Path, spec: TargetFile, repairs: Counter) -> pd.DataFrame:
    table = rawcsv.read_csv(path, {spec.id: pa.string(), spec.target: pa.string()})
    ids = rawcsv.require_present(path, table, spec.id).to_pandas().str.strip()
    values = rawcsv.require_present(path, table, spec.target).to_pandas().str.strip()
    targets = to_int_targets(path, spec.target, pd.DataFrame({"client_id": ids, "target": values}))
    first_target = targets.groupby("client_id", sort=False)["target"].transform("first")
    conflict = rawcsv.first_true((targets["target"] != first_target).to_numpy())
    if conflict is not None:
        client = targets["client_id"].iloc[conflict]
        first_line = rawcsv.line_of(int(np.flatnonzero((targets["client_id"] == client).to_numpy())[0]))
        raise DataError(
            path,
            f"client {client!r} appears with different targets (also on line {first_line})",
            column=spec.target,
            row=rawcsv.line_of(conflict),
        )
    exact = targets.duplicated()
    if exact.any():
        repairs["duplicate_targets"] += int(exact.sum())
        targets = targets[~exact].reset_index(drop=True)
    return targets


def check_target_values(ds: DatasetSpec, targets: pd.DataFrame, path: Path) -> None:
    n_classes = int(ds.n_classes)
    bad = (targets["target"] < 0) | (targets["target"] >= n_classes)
    if bad.any():
        client, value = targets.loc[bad.idxmax(), ["client_id", "target"]]
        raise DataError(path, f"target {value} of client {client!r} is outside [0, {n_classes}) (dataset.n_classes)")


def check_events(ds: DatasetSpec, store: Events, repairs: Counter) -> None:
    """Sort by client, time (stable: file order breaks ties), then count duplicates and non-ISO MCCs."""
    store.order = sort_order(store)
    dup = duplicated_rows(store)
    if dup.any():
        repairs["duplicate_events"] += int(dup.sum())
        if ds.drop_duplicates:
            store.order = store.order[~dup]
    if ds.mcc_names == "iso18245":
        mcc = store.columns["mcc"]
        codes, counts = np.unique(mcc if len(store.order) == len(mcc) else mcc[store.order], return_counts=True)
        unknown = int(counts[[not is_iso18245(int(c)) for c in codes]].sum())
        if unknown:
            repairs["mcc_not_iso18245"] += unknown


@functools.lru_cache(maxsize=None)
def is_iso18245(code: int) -> bool:
    import iso18245

    try:
        iso18245.get_mcc(f"{code:04d}")
        return True
    except (iso18245.MCCNotFound, iso18245.InvalidMCC):
        return False
