"""Raw dataset files → canonical events and targets, one loader per raw schema (registry `LOADERS`).

Every loader describes its schema as `EventFile`/`TargetFile` specs (file names, column names, how the time
is written) and hands them to the same reading code, so the real datasets and the generic loader
(`dataset.loader=generic`, a column mapping in the config) share every check.

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
from omegaconf import DictConfig, OmegaConf

from llm4trx.data import rawcsv
from llm4trx.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

UNKNOWN = "unknown"


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
    events: pd.DataFrame  # canonical columns, sorted by client_id, event_time
    targets: pd.DataFrame  # client_id, target (only clients with events)
    repairs: Counter


# loader name (dataset.loader) -> function(dataset config) -> Loaded. A plain dict: the loaders are this
# module's own functions and llm-foundry's catalogue registries would add an import of the whole stack.
LOADERS: dict[str, Callable[[DictConfig], Loaded]] = {}


def register(name: str):
    def add(fn):
        LOADERS[name] = fn
        return fn

    return add


def load(ds: DictConfig) -> Loaded:
    """Canonical events and targets of the dataset described by the `dataset` config section."""
    missing = sorted(OmegaConf.missing_keys(ds))
    if missing:
        names = [k if k.startswith("dataset.") else f"dataset.{k}" for k in missing]  # relative to the root or not
        raise ConfigError("set the mandatory dataset keys: " + ", ".join(names))
    if ds.loader not in LOADERS:
        raise ConfigError(f"dataset.loader={ds.loader!r} is not one of {sorted(LOADERS)}")
    raw_dir = Path(ds.raw_dir)
    if not raw_dir.is_dir():
        raise DataError(raw_dir, "dataset.raw_dir is not a folder (set dataset.raw_dir or LLM4TRX_DATA_DIR)")
    return LOADERS[ds.loader](ds)


@register("rosbank")
def load_rosbank(ds: DictConfig) -> Loaded:
    """train.csv (labeled, target_flag per row) + optional test.csv (unlabeled); TRDATETIME like 21OCT17:00:00:00."""
    cats = {name: name for name in ("channel_type", "currency", "trx_category") if name in ds.categorical}
    common = dict(id="cl_id", time="TRDATETIME", amount="amount", mcc="MCC", time_format="%d%b%y:%H:%M:%S", categorical=cats)
    return assemble(ds, [EventFile("train.csv", target="target_flag", **common), EventFile("test.csv", required=False, **common)], None)


@register("age_pred")
def load_age_pred(ds: DictConfig) -> Loaded:
    """transactions_train.csv (+ optional transactions_test.csv), targets train_target.csv (bins, 4 classes).

    trans_date is an anonymized day index: dates count from dataset.time_origin; small_group is an anonymous
    category code, stored as the canonical `mcc` (dataset.mcc_names: null)."""
    common = dict(id="client_id", time="trans_date", amount="amount_rur", mcc="small_group", time_format="days", time_origin=ds.time_origin)
    files = [EventFile("transactions_train.csv", **common), EventFile("transactions_test.csv", required=False, **common)]
    return assemble(ds, files, TargetFile("train_target.csv", id="client_id", target="bins"))


@register("gender")
def load_gender(ds: DictConfig) -> Loaded:
    """transactions.csv (tr_datetime 'D HH:MM:SS' from dataset.time_origin), targets gender_train.csv."""
    cats = {name: name for name in ("tr_type", "term_id") if name in ds.categorical}
    files = [
        EventFile("transactions.csv", id="customer_id", time="tr_datetime", amount="amount", mcc="mcc_code",
                  time_format="day_time", time_origin=ds.time_origin, categorical=cats)
    ]
    return assemble(ds, files, TargetFile("gender_train.csv", id="customer_id", target="gender"))


@register("generic")
def load_generic(ds: DictConfig) -> Loaded:
    """Anyone's own data: files and column names from the config (see conf/dataset/custom.yaml)."""
    col = ds.columns
    files = [
        EventFile(name, id=ds.id_column, time=col.time, amount=col.amount, mcc=col.mcc, time_format=ds.time_format,
                  time_origin=ds.get("time_origin"), categorical={c: c for c in ds.categorical},
                  target=ds.targets.column if ds.targets.get("file") is None else None)
        for name in ds.transactions
    ]
    targets = None if ds.targets.get("file") is None else TargetFile(ds.targets.file, id=ds.id_column, target=ds.targets.column)
    return assemble(ds, files, targets)


def assemble(ds: DictConfig, files: list[EventFile], target_file: TargetFile | None) -> Loaded:
    raw_dir = Path(ds.raw_dir)
    repairs: Counter = Counter()
    events, row_targets = [], []
    for spec in files:
        path = raw_dir / spec.name
        if not spec.required and not path.exists():
            continue
        frame, targets = read_events(path, spec, repairs)
        events.append(frame)
        if targets is not None:
            row_targets.append(targets)
    events = concat_events(events)
    if target_file is not None:
        targets = read_targets(raw_dir / target_file.name, target_file, repairs)
    else:
        targets = pd.concat(row_targets, ignore_index=True)
    check_target_values(ds, targets, raw_dir / (target_file.name if target_file else files[0].name))
    events = check_events(ds, events, repairs)
    known = events["client_id"].cat.remove_unused_categories().cat.categories
    without = ~targets["client_id"].isin(known)
    if without.any():
        repairs["targets_without_events"] += int(without.sum())
        targets = targets[~without].reset_index(drop=True)
    for what, count in sorted(repairs.items()):
        if count:
            log.warning("%s: %s = %d", ds.name, what, count)
    return Loaded(events=events, targets=targets, repairs=repairs)


def read_events(path: Path, spec: EventFile, repairs: Counter) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    time_type = pa.int64() if spec.time_format in ("days", "unix") else pa.string()
    types = {spec.id: pa.string(), spec.time: time_type, spec.amount: pa.float64(), spec.mcc: pa.int64()}
    types.update({raw: pa.string() for raw in spec.categorical.values()})
    if spec.target:
        types[spec.target] = pa.int64()
    table = rawcsv.read_csv(path, types)
    ids = rawcsv.require_present(path, table, spec.id)
    mcc = rawcsv.require_present(path, table, spec.mcc).to_numpy()
    bad = rawcsv.first_true((mcc < 0) | (mcc > np.iinfo(np.int32).max))
    if bad is not None:
        raise DataError(path, f"category code {mcc[bad]} is out of range", column=spec.mcc, row=rawcsv.line_of(bad))
    frame = pd.DataFrame(
        {
            "client_id": rawcsv.categories(ids),
            "event_time": parse_time(path, table, spec),
            "amount": rawcsv.require_finite(path, table, spec.amount),
            "mcc": mcc.astype(np.int32),
        }
    )
    for canonical, raw in spec.categorical.items():
        values = rawcsv.categories(table.column(raw))
        if "" in values.categories:
            repairs["categorical_filled"] += int((values == "").sum())
            values = values.rename_categories({"": UNKNOWN}) if UNKNOWN not in values.categories else \
                pd.Categorical(np.where(values == "", UNKNOWN, values.astype(object)))
        frame[canonical] = values
    targets = None
    if spec.target:
        values = rawcsv.require_present(path, table, spec.target).to_numpy()
        codes = frame["client_id"].cat.codes.to_numpy()
        first = np.full(len(frame["client_id"].cat.categories), -1, dtype=np.int64)
        first[codes[::-1]] = np.arange(len(codes))[::-1]  # each client's first row
        bad = rawcsv.first_true(values != values[first[codes]])
        if bad is not None:
            raise DataError(path, f"client {frame['client_id'].iloc[bad]!r} has a different target than in its "
                            f"first row (line {rawcsv.line_of(first[codes[bad]])})", column=spec.target, row=rawcsv.line_of(bad))
        used = first[first >= 0]
        targets = pd.DataFrame({"client_id": frame["client_id"].iloc[used].astype(object).to_numpy(), "target": values[used]})
    return frame, targets


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
        raise DataError(path, f"target {frame['target'].iloc[i]!r} is not an integer class", column=column,
                        row=rawcsv.line_of(frame.index[i]))
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
        raise DataError(path, f"client {client!r} appears with different targets (also on line {first_line})",
                        column=spec.target, row=rawcsv.line_of(conflict))
    exact = targets.duplicated()
    if exact.any():
        repairs["duplicate_targets"] += int(exact.sum())
        targets = targets[~exact].reset_index(drop=True)
    return targets


def check_target_values(ds: DictConfig, targets: pd.DataFrame, path: Path) -> None:
    n_classes = int(ds.n_classes)
    bad = (targets["target"] < 0) | (targets["target"] >= n_classes)
    if bad.any():
        client, value = targets.loc[bad.idxmax(), ["client_id", "target"]]
        raise DataError(path, f"target {value} of client {client!r} is outside [0, {n_classes}) (dataset.n_classes)")


def check_events(ds: DictConfig, events: pd.DataFrame, repairs: Counter) -> pd.DataFrame:
    """Sort by client, time (stable: file order breaks ties), then count duplicates and non-ISO MCCs."""
    events = sort_events(events)
    dup = duplicated_rows(events)
    if dup.any():
        repairs["duplicate_events"] += int(dup.sum())
        if ds.get("drop_duplicates", False):
            events = events[~dup].reset_index(drop=True)
    if ds.get("mcc_names") == "iso18245":
        codes, counts = np.unique(events["mcc"].to_numpy(), return_counts=True)
        unknown = int(counts[[not is_iso18245(int(c)) for c in codes]].sum())
        if unknown:
            repairs["mcc_not_iso18245"] += unknown
    return events


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    clients = events["client_id"].cat
    rank = np.argsort(np.argsort(clients.categories.to_numpy().astype(str), kind="stable"))  # lexicographic rank
    client_rank = rank[clients.codes.to_numpy()].astype(np.int64)
    time = events["event_time"].to_numpy().view(np.int64)
    seconds, rest = np.divmod(time - time.min(), 1_000_000_000)
    span = int(seconds.max()) + 1
    if not rest.any() and span * (len(rank) + 1) < 2**62:
        order = np.argsort(client_rank * span + seconds, kind="stable")  # one sort on a combined key
    else:
        by_time = np.argsort(time, kind="stable")
        order = by_time[np.argsort(client_rank[by_time], kind="stable")]
    return events.iloc[order].reset_index(drop=True)


def duplicated_rows(events: pd.DataFrame) -> np.ndarray:
    """Rows equal in every column to an earlier row of `events` sorted by client, time: only rows sharing
    client and time with a neighbour can be duplicates, and only those are compared in full (pandas'
    DataFrame.duplicated on all rows factorizes every column: several times slower)."""
    codes = events["client_id"].cat.codes.to_numpy()
    time = events["event_time"].to_numpy()
    tie = (codes[1:] == codes[:-1]) & (time[1:] == time[:-1])
    candidates = np.zeros(len(events), dtype=bool)
    candidates[1:] |= tie
    candidates[:-1] |= tie
    dup = np.zeros(len(events), dtype=bool)
    if candidates.any():
        dup[candidates] = events[candidates].duplicated().to_numpy()
    return dup


@functools.lru_cache(maxsize=None)
def is_iso18245(code: int) -> bool:
    import iso18245

    try:
        iso18245.get_mcc(f"{code:04d}")
        return True
    except (iso18245.MCCNotFound, iso18245.InvalidMCC):
        return False


def concat_events(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-file events keeping the string columns categorical (pd.concat would make them objects)."""
    if len(frames) == 1:
        return frames[0]
    out = {}
    for name in frames[0].columns:
        if isinstance(frames[0][name].dtype, pd.CategoricalDtype):
            out[name] = pd.api.types.union_categoricals([f[name] for f in frames])
        else:
            out[name] = np.concatenate([f[name].to_numpy() for f in frames])
    return pd.DataFrame(out)
