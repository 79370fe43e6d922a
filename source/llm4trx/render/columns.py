"""What every text format is built from: the dataset's render context (`RenderContext`, computed once over all
events, or accumulated chunk by chunk with `ContextAccumulator`) and the events' columns formatted once for the
whole table (`Fields`: dates and categorical values through their few unique values, amounts through integer
arithmetic), as pyarrow string arrays the formats (render/formats.py) join."""

from __future__ import annotations

from dataclasses import dataclass, field
import functools
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import DatasetSpec, TextSpec


CALENDAR = ("dow", "dom", "month", "end", "same")  # the calendar words of the fields format (text.calendar)


def mcc_label_map(codes: np.ndarray, names: bool) -> dict[int, str]:
    """MCC code -> ISO 18245 description (or the 4-digit code where unknown or names are off)."""
    if not names:
        return {int(c): str(int(c)) for c in codes}
    import iso18245

    out = {}
    for code in codes:
        key = f"{int(code):04d}"
        try:
            info = iso18245.get_mcc(key)
            label = info.iso_description or info.usda_description or info.visa_description or info.stripe_description
        except (iso18245.MCCNotFound, iso18245.InvalidMCC):
            label = ""
        out[int(code)] = label.strip() or key
    return out


@dataclass
class RenderContext:
    """Dataset-level choices every client's text shares (so one client renders the same alone or in bulk)."""

    categorical: list[str]
    mcc_names: bool  # MCC rendered as ISO 18245 descriptions (else as codes)
    time_of_day: str  # "" (dates only), "%H:%M" or "%H:%M:%S": the finest resolution present in the data
    usual: dict[str, str] = field(default_factory=dict)  # compact omits a categorical value equal to its mode
    calendar: tuple[str, ...] = ()  # text.calendar: the calendar words of the fields format (CALENDAR)
    calendar_on_change: bool = False  # text.calendar_on_change: a word only where its value changes

    @classmethod
    def from_events(cls, events: pd.DataFrame, ds: DatasetSpec, text: TextSpec) -> "RenderContext":
        categorical = list(ds.categorical or [])
        mcc_names = ds.mcc_names == "iso18245" and bool(text.mcc_descriptions)
        ns = events["event_time"].to_numpy("datetime64[ns]").astype(np.int64)
        secs = (ns // 10**9) % 86400
        time_of_day = "%H:%M:%S" if (secs % 60).any() else "%H:%M" if secs.any() else ""
        usual = {}
        for col in categorical:
            counts = events[col].fillna(MISSING).value_counts()
            usual[col] = str(counts.index[0]) if len(counts) else MISSING
        return cls(categorical, mcc_names, time_of_day, usual, calendar_of(text), bool(text.calendar_on_change))


MISSING = "NA"


def calendar_of(text: TextSpec) -> tuple[str, ...]:
    """text.calendar (fields format only): which calendar words follow each transaction's `when` word."""
    words = tuple(text.calendar or ())  # each one of CALENDAR: core/schema.py
    if words and text.format != "fields":
        raise ConfigError(f"text.calendar is a fields-format option (text=fields); text.format is {text.format!r}")
    return words


class ContextAccumulator:
    """RenderContext.from_events over the whole table, computed from consecutive batches of its rows.

    `update(batch)` for every batch in order (a DataFrame with event_time and the categorical columns),
    then `result()`: the same context as from_events on their concatenation (modes by the same pandas
    value_counts ordering: counts descending, ties in order of first appearance).
    """

    def __init__(self, ds: DatasetSpec, text: TextSpec):
        self.categorical = list(ds.categorical or [])
        self.mcc_names = ds.mcc_names == "iso18245" and bool(text.mcc_descriptions)
        self.calendar = calendar_of(text)
        self.calendar_on_change = bool(text.calendar_on_change)
        self.any_seconds = self.any_time = False
        self.counts: dict[str, dict] = {col: {} for col in self.categorical}

    def update(self, events: pd.DataFrame) -> None:
        if not (self.any_seconds and self.any_time):
            ns = events["event_time"].to_numpy("datetime64[ns]").astype(np.int64)
            secs = (ns // 10**9) % 86400
            self.any_seconds = self.any_seconds or bool((secs % 60).any())
            self.any_time = self.any_time or bool(secs.any())
        for col in self.categorical:
            seen = self.counts[col]
            for value, n in events[col].fillna(MISSING).value_counts(sort=False).items():
                seen[value] = seen.get(value, 0) + int(n)

    def result(self) -> RenderContext:
        time_of_day = "%H:%M:%S" if self.any_seconds else "%H:%M" if self.any_time else ""
        usual = {}
        for col in self.categorical:
            seen = self.counts[col]
            counts = pd.Series(np.array(list(seen.values()), np.int64), index=pd.Index(list(seen), dtype=object))
            counts = counts.sort_values(ascending=False)
            usual[col] = str(counts.index[0]) if len(counts) else MISSING
        return RenderContext(
            self.categorical, self.mcc_names, time_of_day, usual, self.calendar, self.calendar_on_change
        )


def take_unique(values: np.ndarray, fmt: Callable[[np.ndarray], list[str]]) -> pa.Array:
    """Format the unique values of a low-cardinality column once, then gather."""
    uniq, inverse = unique_inverse(values)
    return pa.array(fmt(uniq), pa.string()).take(pa.array(inverse.astype(np.int64)))


def unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(values, return_inverse=True), by a lookup table where the values are integers (or datetimes) of a
    small range (no sort)."""
    ints = values.view(np.int64) if values.dtype.kind in "iM" and values.dtype.itemsize == 8 else values
    if len(ints) and ints.dtype.kind == "i" and int(ints.max()) - int(ints.min()) < 1 << 20:
        low = ints.min()  # small integer range: a lookup table instead of sorting
        code = (ints - low).astype(np.int64)
        present = np.flatnonzero(np.bincount(code))
        lookup = np.zeros(int(code.max()) + 1, np.int64)
        lookup[present] = np.arange(len(present))
        uniq, inverse = (present + low).astype(ints.dtype).view(values.dtype), lookup[code]
    else:
        uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, inverse


def ascii_rows(rows: np.ndarray) -> pa.Array:
    """A numpy array of fixed-width byte strings (dtype S<w>, or a structured dtype of them) as an Arrow string
    array, straight from its buffer: fixed-width fields (clock times, dates) without a per-part join."""
    n, width = len(rows), rows.dtype.itemsize
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)  # string arrays hold < 2 GiB anyway
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(rows)))


@functools.cache
def clock_table(seconds: bool) -> np.ndarray:
    """Every time of day, 'HH:MM:SS' (or 'HH:MM'), indexed by the second of the day: 86,400 entries, once."""
    fmt = "{:02d}:{:02d}:{:02d}" if seconds else "{:02d}:{:02d}"
    return np.array([fmt.format(s // 3600, s // 60 % 60, s % 60) for s in range(86400)], f"S{8 if seconds else 5}")


def clock_bytes(ns: np.ndarray, seconds: bool) -> np.ndarray:
    """The clock times of datetime64[ns] values as fixed-width byte strings."""
    return clock_table(seconds)[(ns.astype(np.int64) // 10**9) % 86400]


def date_bytes(days: np.ndarray) -> np.ndarray | None:
    """datetime64[D] values as np.datetime_as_string writes them (YYYY-MM-DD), 10-byte strings formatted once per
    unique day; None unless every one has 10 characters (NaT, a year of other than 4 digits)."""
    uniq, inverse = unique_inverse(days)
    table = np.datetime_as_string(uniq, unit="D")
    if len(table) and not (np.char.str_len(table) == 10).all():
        return None
    return table.astype("S10")[inverse]


def join_strings(*parts, sep: str = "") -> pa.Array:
    return pc.binary_join_element_wise(*parts, sep)


def decimal_string(cents: np.ndarray, decimals: int) -> pa.Array:
    """Integers scaled by 10**decimals -> fixed-point strings ('-1234.50'), without a per-row loop."""
    neg = cents < 0
    mag = np.abs(cents)
    whole = pc.cast(pa.array(mag // 10**decimals), pa.string())
    if decimals:
        frac = pc.utf8_lpad(pc.cast(pa.array(mag % 10**decimals), pa.string()), decimals, "0")
        whole = join_strings(whole, frac, sep=".")
    if not neg.any():  # the usual case: skip building a signed copy of every string
        return whole
    return pc.if_else(pa.array(neg), join_strings("-", whole), whole)


def amount_2dp(amount: np.ndarray) -> pa.Array:
    return decimal_string(np.rint(amount * 100).astype(np.int64), 2)


def amount_short(amount: np.ndarray) -> pa.Array:
    """Three significant digits with k/M suffixes: 1234.5 -> 1.23k, 56.78 -> 56.8, 0.5 -> 0.5, 2e6 -> 2M."""
    mag = np.abs(amount)
    with np.errstate(divide="ignore"):  # log10(0)
        step = 10.0 ** (np.floor(np.log10(np.where(mag > 0, mag, 1.0))) - 2)
    mag = np.rint(mag / step) * step  # 3 significant digits first, so 999.99 -> 1000 -> 1k
    scale = np.where(mag >= 1e6, 1e6, np.where(mag >= 1e3, 1e3, 1.0))
    value = mag / scale
    decimals = np.where(value >= 100, 0, np.where(value >= 10, 1, 2))
    scaled = np.rint(value * 10.0**decimals).astype(np.int64)
    whole = pc.cast(pa.array(scaled // 10**decimals), pa.string())
    frac = pc.utf8_rtrim(_frac_digits(scaled, decimals), "0")
    text = pc.if_else(pc.equal(pc.utf8_length(frac), 0), whole, join_strings(whole, frac, sep="."))
    suffix = pa.array(np.where(scale == 1e6, "M", np.where(scale == 1e3, "k", "")))
    text = join_strings(text, suffix)
    return pc.if_else(pa.array(amount < 0), join_strings("-", text), text)


def _frac_digits(scaled: np.ndarray, decimals: np.ndarray) -> pa.Array:
    """The `decimals` fractional digits of `scaled` (0, 1 or 2 of them) as zero-padded strings."""
    frac = scaled % (10**decimals)
    two = pc.utf8_lpad(pc.cast(pa.array(frac), pa.string()), 2, "0")
    one = pc.cast(pa.array(frac), pa.string())
    return pc.if_else(pa.array(decimals == 2), two, pc.if_else(pa.array(decimals == 1), one, pa.scalar("")))


class Fields:
    """Per-event columns of `events` (sorted by client_id, event_time) formatted as strings, computed lazily."""

    def __init__(self, events: pd.DataFrame, ctx: RenderContext):
        self.ev, self.ctx = events, ctx
        client = events["client_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, client[1:] != client[:-1]]) if len(client) else np.zeros(0, int)
        self.offsets = np.r_[starts, len(client)].astype(np.int64)  # client k: events offsets[k]:offsets[k+1]
        self.client_ids = client[starts]
        self.n_events = np.diff(self.offsets)
        self.ns = events["event_time"].to_numpy("datetime64[ns]")
        self._categorical: dict[str, pa.Array] = {}
        self._constant: dict[str, np.ndarray] = {}
        self._parent: tuple[Fields, np.ndarray] | None = None

    def subset(self, rows: np.ndarray) -> "Fields":
        """The fields of events `rows` (sorted; at least one row of every client) for rendering their LINES:
        values that depend on a client's whole history (the day gap to the previous event, categoricals
        constant over the history) come from these fields. Heads are rendered from the whole fields."""
        sub = Fields(self.ev.iloc[rows], self.ctx)
        sub.__dict__["day_gap"] = self.day_gap[rows]
        if "end" in self.ctx.calendar:  # only the words in use: each is a pass over every event of the chunk
            sub.__dict__["days_to_end"] = self.days_to_end[rows]
        if "same" in self.ctx.calendar:
            sub.__dict__["same_mcc_gap"] = self.same_mcc_gap[rows]
        sub._parent = (self, rows)
        return sub

    @property
    def days(self) -> np.ndarray:
        return self.ns.astype("datetime64[D]")

    @cached_property
    def date(self) -> pa.Array:
        return take_unique(self.days, lambda u: list(np.datetime_as_string(u, unit="D")))

    @cached_property
    def clock_bytes(self) -> np.ndarray:
        return clock_bytes(self.ns, self.ctx.time_of_day.endswith("%S"))

    @cached_property
    def clock(self) -> pa.Array:
        return ascii_rows(self.clock_bytes)

    @cached_property
    def datetime(self) -> pa.Array:
        """'date clock', one fixed-width string per event: a third of the time of joining the two columns."""
        if not self.ctx.time_of_day:
            return self.date
        date = date_bytes(self.days)
        if date is None:  # rows of unequal width
            return join_strings(self.date, self.clock, sep=" ")
        rows = np.empty(len(date), np.dtype([("date", "S10"), ("space", "S1"), ("clock", self.clock_bytes.dtype)]))
        rows["date"], rows["space"], rows["clock"] = date, b" ", self.clock_bytes
        return ascii_rows(rows)

    @cached_property
    def amount(self) -> pa.Array:
        return amount_2dp(self.ev["amount"].to_numpy(np.float64))

    @cached_property
    def amount_short(self) -> pa.Array:
        return amount_short(self.ev["amount"].to_numpy(np.float64))

    @cached_property
    def mcc_code(self) -> pa.Array:
        return take_unique(self.ev["mcc"].to_numpy(np.int64), lambda u: [str(int(c)) for c in u])

    @cached_property
    def mcc(self) -> pa.Array:
        """Description or code, as the context says."""
        if not self.ctx.mcc_names:
            return self.mcc_code
        return take_unique(self.ev["mcc"].to_numpy(np.int64), lambda u: list(mcc_label_map(u, True).values()))

    def categorical(self, col: str) -> pa.Array:
        if col not in self._categorical:
            values = pa.array(self.ev[col], from_pandas=True)  # zero-copy when read with Arrow string dtypes
            values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
            values = values if values.type == pa.string() else pc.cast(values, pa.string())
            self._categorical[col] = pc.fill_null(values, MISSING)
        return self._categorical[col]

    @cached_property
    def day_gap(self) -> np.ndarray:
        """Days since the client's previous transaction (0 for the first)."""
        d = self.days.astype(np.int64)
        gap = np.diff(d, prepend=d[:1] if len(d) else d)
        gap[self.offsets[:-1][self.n_events > 0]] = 0
        return gap

    @cached_property
    def days_to_end(self) -> np.ndarray:
        """Days from each transaction to the client's last one (0 for the last)."""
        d = self.days.astype(np.int64)
        last = np.repeat(d[self.offsets[1:][self.n_events > 0] - 1], self.n_events[self.n_events > 0])
        return last - d

    @cached_property
    def same_mcc_gap(self) -> np.ndarray:
        """Days since the client's previous transaction of the same MCC (-1 for the first of its MCC)."""
        d = self.days.astype(np.int64)
        mcc = self.ev["mcc"].to_numpy(np.int64)
        client = np.repeat(np.arange(len(self.n_events)), self.n_events)
        order = np.lexsort((np.arange(len(d)), mcc, client))  # by client, then MCC, then time (events are in time)
        days, mccs, clients = d[order], mcc[order], client[order]
        follows = np.r_[False, (mccs[1:] == mccs[:-1]) & (clients[1:] == clients[:-1])]
        gap = np.empty(len(d), np.int64)
        gap[order] = np.where(follows, days - np.r_[days[:1], days[:-1]], -1)
        return gap

    def client_first_last(self) -> tuple[pa.Array, pa.Array]:
        if not len(self.client_ids):
            return pa.array([], pa.string()), pa.array([], pa.string())
        as_date = lambda u: list(np.datetime_as_string(u, unit="D"))  # noqa: E731  (as self.date, on 2 rows per client)
        first = take_unique(self.days[self.offsets[:-1]], as_date)
        last = take_unique(self.days[self.offsets[1:] - 1], as_date)
        return first, last


def mapped(values: pa.Array, fn: Callable[[str], str]) -> pa.Array:
    """Apply a string escape/quote function to a low-cardinality string column through its unique values."""
    enc = pc.dictionary_encode(values)
    return pa.array([fn(v) for v in enc.dictionary.to_pylist()], pa.string()).take(enc.indices)
