"""Text formats: a client's transactions rendered as text, vectorised over all clients at once.

Every format is built from per-event *lines* and a per-client *head* (and *tail*): a client's text is
`head + lines joined by sep + tail`. Columns are formatted once for the whole table (dates and categorical
values through their few unique values, amounts through integer arithmetic) and joined with pyarrow's string
kernels, so rendering 1M events takes about a second instead of a per-row Python loop.
Truncation (llm4trx.text) drops the oldest lines; `grouped_mcc` regroups the kept lines by MCC.

Reuse (augment): `RenderContext.from_events(events, dataset_cfg, text_cfg)` once for the dataset, then
`render_client(events_of_one_client, "compact", ctx)` or `render(events, fmt, ctx)` for many clients.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from llm4trx.core.errors import ConfigError

FORMATS: dict[str, "Format"] = {}


def register(fmt: "Format") -> "Format":
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> "Format":
    if name not in FORMATS:
        raise ConfigError(f"unknown text format {name!r}; known formats: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]


# ----------------------------------------------------------------------------------------------- context


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

    @classmethod
    def from_events(cls, events: pd.DataFrame, dataset_cfg, text_cfg) -> "RenderContext":
        categorical = list(dataset_cfg.get("categorical") or [])
        mcc_names = dataset_cfg.get("mcc_names") == "iso18245" and bool(text_cfg.get("mcc_descriptions", True))
        ns = events["event_time"].to_numpy("datetime64[ns]").astype(np.int64)
        secs = (ns // 10**9) % 86400
        time_of_day = "%H:%M:%S" if (secs % 60).any() else "%H:%M" if secs.any() else ""
        usual = {}
        for col in categorical:
            counts = events[col].fillna(MISSING).value_counts()
            usual[col] = str(counts.index[0]) if len(counts) else MISSING
        return cls(categorical, mcc_names, time_of_day, usual, calendar_of(text_cfg))


MISSING = "NA"


def calendar_of(text_cfg) -> tuple[str, ...]:
    """text.calendar (fields format only): which calendar words follow each transaction's `when` word."""
    words = tuple(text_cfg.get("calendar") or ())  # each one of CALENDAR: core/schema.py
    if words and text_cfg.get("format") != "fields":
        raise ConfigError(
            f"text.calendar is a fields-format option (text=fields); text.format is {text_cfg.get('format')!r}"
        )
    return words


class ContextAccumulator:
    """RenderContext.from_events over the whole table, computed from consecutive batches of its rows.

    `update(batch)` for every batch in order (a DataFrame with event_time and the categorical columns),
    then `result()`: the same context as from_events on their concatenation (modes by the same pandas
    value_counts ordering: counts descending, ties in order of first appearance).
    """

    def __init__(self, dataset_cfg, text_cfg):
        self.categorical = list(dataset_cfg.get("categorical") or [])
        self.mcc_names = dataset_cfg.get("mcc_names") == "iso18245" and bool(text_cfg.get("mcc_descriptions", True))
        self.calendar = calendar_of(text_cfg)
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
        return RenderContext(self.categorical, self.mcc_names, time_of_day, usual, self.calendar)


def _take_unique(values: np.ndarray, fmt: Callable[[np.ndarray], list[str]]) -> pa.Array:
    """Format the unique values of a low-cardinality column once, then gather."""
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
    return pa.array(fmt(uniq), pa.string()).take(pa.array(inverse.astype(np.int64)))


def _join(*parts, sep: str = "") -> pa.Array:
    return pc.binary_join_element_wise(*parts, sep)


def decimal_string(cents: np.ndarray, decimals: int) -> pa.Array:
    """Integers scaled by 10**decimals -> fixed-point strings ('-1234.50'), without a per-row loop."""
    neg = cents < 0
    mag = np.abs(cents)
    whole = pc.cast(pa.array(mag // 10**decimals), pa.string())
    if decimals:
        frac = pc.utf8_lpad(pc.cast(pa.array(mag % 10**decimals), pa.string()), decimals, "0")
        whole = _join(whole, frac, sep=".")
    if not neg.any():  # the usual case: skip building a signed copy of every string
        return whole
    return pc.if_else(pa.array(neg), _join("-", whole), whole)


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
    text = pc.if_else(pc.equal(pc.utf8_length(frac), 0), whole, _join(whole, frac, sep="."))
    suffix = pa.array(np.where(scale == 1e6, "M", np.where(scale == 1e3, "k", "")))
    text = _join(text, suffix)
    return pc.if_else(pa.array(amount < 0), _join("-", text), text)


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
        if self.ctx.calendar:
            sub.__dict__["days_to_end"] = self.days_to_end[rows]
        sub._parent = (self, rows)
        return sub

    @property
    def days(self) -> np.ndarray:
        return self.ns.astype("datetime64[D]")

    @cached_property
    def date(self) -> pa.Array:
        return _take_unique(self.days, lambda u: list(np.datetime_as_string(u, unit="D")))

    @cached_property
    def clock(self) -> pa.Array:
        secs = (self.ns.astype(np.int64) // 10**9) % 86400
        two_digits = pa.array([f"{i:02d}" for i in range(60)])
        parts = [two_digits.take(pa.array(secs // 3600)), two_digits.take(pa.array(secs // 60 % 60))]
        if self.ctx.time_of_day.endswith("%S"):
            parts.append(two_digits.take(pa.array(secs % 60)))
        return _join(*parts, sep=":")

    @cached_property
    def datetime(self) -> pa.Array:
        return _join(self.date, self.clock, sep=" ") if self.ctx.time_of_day else self.date

    @cached_property
    def amount(self) -> pa.Array:
        return amount_2dp(self.ev["amount"].to_numpy(np.float64))

    @cached_property
    def amount_short(self) -> pa.Array:
        return amount_short(self.ev["amount"].to_numpy(np.float64))

    @cached_property
    def mcc_code(self) -> pa.Array:
        return _take_unique(self.ev["mcc"].to_numpy(np.int64), lambda u: [str(int(c)) for c in u])

    @cached_property
    def mcc(self) -> pa.Array:
        """Description or code, as the context says."""
        if not self.ctx.mcc_names:
            return self.mcc_code
        return _take_unique(self.ev["mcc"].to_numpy(np.int64), lambda u: list(mcc_label_map(u, True).values()))

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

    def client_first_last(self) -> tuple[pa.Array, pa.Array]:
        if not len(self.client_ids):
            return pa.array([], pa.string()), pa.array([], pa.string())
        as_date = lambda u: list(np.datetime_as_string(u, unit="D"))  # noqa: E731  (as self.date, on 2 rows per client)
        first = _take_unique(self.days[self.offsets[:-1]], as_date)
        last = _take_unique(self.days[self.offsets[1:] - 1], as_date)
        return first, last


def mapped(values: pa.Array, fn: Callable[[str], str]) -> pa.Array:
    """Apply a string escape/quote function to a low-cardinality string column through its unique values."""
    enc = pc.dictionary_encode(values)
    return pa.array([fn(v) for v in enc.dictionary.to_pylist()], pa.string()).take(enc.indices)


# ----------------------------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class Format:
    """head(fields) -> per-client strings; line(fields) -> per-event strings; text = head + join(lines, sep) + tail."""

    name: str
    head: Callable[[Fields], pa.Array]
    line: Callable[[Fields], pa.Array]
    sep: str = "\n"
    tail: str = ""
    grouped: bool = False  # lines regrouped by MCC after truncation (see group_by_mcc)


def _field_names(ctx: RenderContext) -> list[str]:
    return ["date", "merchant category" if ctx.mcc_names else "mcc", "amount", *ctx.categorical]


def _summary(f: Fields, sep: str, kv: str = ": ") -> pa.Array:
    first, last = f.client_first_last()
    n = pc.cast(pa.array(f.n_events), pa.string())
    return _join(_join("transactions", n, sep=kv), _join("from", first, sep=kv), _join("to", last, sep=kv), sep=sep)


def _values(f: Fields, amount: pa.Array | None = None) -> list[pa.Array]:
    return [f.datetime, f.mcc, f.amount if amount is None else amount, *(f.categorical(c) for c in f.ctx.categorical)]


def flat_head(f: Fields) -> pa.Array:
    return _join(_summary(f, " | "), "fields: " + ", ".join(_field_names(f.ctx)) + "\n", sep=" | ")


register(Format("flat", flat_head, lambda f: _join(*_values(f), sep=", ")))


def compact_head(f: Fields) -> pa.Array:
    _, last = f.client_first_last()
    usual = " ".join(f.ctx.usual[c] for c in f.ctx.categorical)
    legend = "day gap" + (" time" if f.ctx.time_of_day else "") + " mcc amount"
    if f.ctx.categorical:
        legend += f" [{' '.join(f.ctx.categorical)} unless {usual}]"
    n = pc.cast(pa.array(f.n_events), pa.string())
    return _join(n, " transactions to ", last, f"\n{legend}\n")


def compact_line(f: Fields) -> pa.Array:
    """`3 5411 1.23k C2C_OUT`: day gap, (time), MCC code, 3 significant digits, categoricals unless usual."""
    parts = [pc.cast(pa.array(f.day_gap), pa.string())]
    if f.ctx.time_of_day:
        parts.append(mapped(f.clock, lambda s: s.replace(":", "")))
    parts += [f.mcc_code, f.amount_short]
    line = _join(*parts, sep=" ")
    for col in f.ctx.categorical:
        value = f.categorical(col)
        extra = pc.if_else(pc.equal(value, f.ctx.usual[col]), "", _join(" ", value))
        line = _join(line, extra)
    return line


register(Format("compact", compact_head, compact_line))


def grouped_line(f: Fields) -> pa.Array:
    """One transaction inside its MCC group: `2017-10-21 1234.50 POS`."""
    return _join(f.datetime, f.amount, *(f.categorical(c) for c in f.ctx.categorical), sep=" ")


def grouped_head(f: Fields) -> pa.Array:
    names = ["date", "amount", *f.ctx.categorical]
    return _join(_summary(f, " | "), "per merchant category: " + " ".join(names) + "\n", sep=" | ")


register(Format("grouped_mcc", grouped_head, grouped_line, grouped=True))
GROUP_ITEM_SEP = "; "


def _json_line(f: Fields) -> pa.Array:
    keys = ["date", "mcc", "amount", *f.ctx.categorical]
    vals = [mapped(f.datetime, json.dumps), mapped(f.mcc, json.dumps), f.amount]
    vals += [mapped(f.categorical(c), json.dumps) for c in f.ctx.categorical]
    parts = [_join(json.dumps(k), v, sep=": ") for k, v in zip(keys, vals)]
    return _join("{", _join(*parts, sep=", "), "}")


def _json_head(f: Fields) -> pa.Array:
    first, last = f.client_first_last()
    n = pc.cast(pa.array(f.n_events), pa.string())
    return _join('{"transactions": ', n, ', "from": "', first, '", "to": "', last, '", "events": [\n')


register(Format("json", _json_head, _json_line, sep=",\n", tail="\n]}"))

_YAML_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 _./()&'-]*[A-Za-z0-9.)]")
_YAML_WORDS = {"yes", "no", "on", "off", "true", "false", "null", "y", "n"}


def yaml_scalar(value: str) -> str:
    """A YAML scalar that reads back as the same string (plain where safe, else double-quoted JSON)."""
    plain = _YAML_PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS and ": " not in value
    return value if plain else json.dumps(value)


def _yaml_line(f: Fields) -> pa.Array:
    keys = ["date", "mcc", "amount", *f.ctx.categorical]
    vals = [mapped(f.datetime, json.dumps), mapped(f.mcc, yaml_scalar), f.amount]
    vals += [mapped(f.categorical(c), yaml_scalar) for c in f.ctx.categorical]
    rows = [_join(k, v, sep=": ") for k, v in zip(keys, vals)]
    return _join("- ", _join(*rows, sep="\n  "))


def _yaml_head(f: Fields) -> pa.Array:
    first, last = f.client_first_last()
    n = pc.cast(pa.array(f.n_events), pa.string())
    return _join("transactions: ", n, "\nfrom: '", first, "'\nto: '", last, "'\nevents:\n")


register(Format("yaml", _yaml_head, _yaml_line))


def _html_line(f: Fields) -> pa.Array:
    cells = [mapped(v, html.escape) for v in _values(f)]
    return _join("<tr><td>", _join(*cells, sep="</td><td>"), "</td></tr>")


def _html_head(f: Fields) -> pa.Array:
    th = "".join(f"<th>{html.escape(n)}</th>" for n in _field_names(f.ctx))
    return _join("<p>", _summary(f, ", "), f"</p>\n<table>\n<tr>{th}</tr>\n")


register(Format("html", _html_head, _html_line, tail="\n</table>"))


def _md_escape(value: str) -> str:
    return value.replace("|", "\\|")


def _md_line(f: Fields) -> pa.Array:
    cells = [mapped(v, _md_escape) for v in _values(f)]
    return _join("| ", _join(*cells, sep=" | "), " |")


def _md_head(f: Fields) -> pa.Array:
    names = _field_names(f.ctx)
    table = "| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n"
    first, last = f.client_first_last()
    n = pc.cast(pa.array(f.n_events), pa.string())
    return _join("**transactions:** ", n, ", **from:** ", first, ", **to:** ", last, "\n\n" + table)


register(Format("markdown", _md_head, _md_line))


# ------------------------------------------------------------------------------------ field tokens
# `fields`: every field value is ONE whitespace-free word, so a transaction costs a handful of tokens with the
# `fields` tokenizer (tokenizers' WordLevel model over whitespace-split words, llm4trx.tokenizer):
#   when   day gap (days since the client's previous transaction) in bins 0 1 2 3 4-5 6-7 8-10 11-14 15-21
#          22-30 31-60 61-90 91-180 181+, joined with the hour (1-hour resolution) where the data has time of
#          day: `d0@14` (a calendar word, as nuFormer's special calendar tokens); `d0` without time;
#   mcc    `m5411`;
#   amount a fixed log grid, AMOUNT_BINS_PER_DECADE bins per factor of 10 (8: each bin spans x1.33, a value
#          is known to about +-15 %): bin k holds |amount| in [10**(k/8), 10**((k+1)/8)), word `a<k>`
#          (`a-<k>` for negative amounts, `a0z` for zero). No fitting, so no client (test or other) shapes it;
#   categoricals `col=value`: a value the client has on every transaction is written once in the header;
#          otherwise per transaction, only where it differs from the dataset's most common value.
# The `when` word starts every transaction, so transactions need no separator token.
DAY_GAP_EDGES = np.array([0, 1, 2, 3, 4, 6, 8, 11, 15, 22, 31, 61, 91, 181])
AMOUNT_BINS_PER_DECADE = 8
AMOUNT_BIN_RANGE = (-24, 80)  # 0.001 .. 1e10; values outside fall in the end bins


def _gap_words() -> list[str]:
    words = []
    for lo, hi in zip(DAY_GAP_EDGES, list(DAY_GAP_EDGES[1:]) + [None]):
        words.append(f"d{lo}+" if hi is None else f"d{lo}" if hi == lo + 1 else f"d{lo}-{hi - 1}")
    return words


def day_gap_bin(gap: np.ndarray) -> np.ndarray:
    return np.searchsorted(DAY_GAP_EDGES, gap, side="right") - 1


def amount_bin(amount: np.ndarray) -> np.ndarray:
    mag = np.abs(amount)
    with np.errstate(divide="ignore"):
        k = np.floor(AMOUNT_BINS_PER_DECADE * np.log10(np.where(mag > 0, mag, 1.0)) + 1e-9)
    return np.clip(k, *AMOUNT_BIN_RANGE).astype(np.int64)


def amount_words(amount: np.ndarray) -> pa.Array:
    words = _take_unique(amount_bin(amount), lambda u: [f"a{int(v)}" for v in u])
    words = pc.if_else(pa.array(amount < 0), _join("a-", pc.utf8_slice_codeunits(words, 1)), words)
    return pc.if_else(pa.array(amount == 0), pa.scalar("a0z"), words)


def when_words(f: Fields) -> pa.Array:
    gap = day_gap_bin(f.day_gap)
    if not f.ctx.time_of_day:
        return pa.array(_gap_words(), pa.string()).take(pa.array(gap))
    hours = (f.ns.astype(np.int64) // 10**9) % 86400 // 3600
    words = pa.array([f"{g}@{h:02d}" for g in _gap_words() for h in range(24)], pa.string())
    return words.take(pa.array(gap * 24 + hours))


# Calendar words (text.calendar, default none), after the `when` word, one token each, as nuFormer-style
# calendar tokens: what the day gaps only give summed over the history.
#   dow    day of week `w1`..`w7` (Monday 1);   dom    day of month `D1`..`D31`;   month  `M1`..`M12`;
#   end    days before the client's last transaction, in the day-gap bins: `e0`, `e1`, ..., `e181+` (recency).
def _calendar_words(f: Fields, word: str) -> pa.Array:
    days = f.days
    if word == "dow":  # 1970-01-01 was a Thursday
        return _take_unique((days.astype(np.int64) + 3) % 7 + 1, lambda u: [f"w{int(v)}" for v in u])
    if word == "dom":
        dom = (days - days.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1
        return _take_unique(dom, lambda u: [f"D{int(v)}" for v in u])
    if word == "month":
        return _take_unique(days.astype("datetime64[M]").astype(np.int64) % 12 + 1, lambda u: [f"M{int(v)}" for v in u])
    if word == "end":
        return pa.array(["e" + w[1:] for w in _gap_words()], pa.string()).take(pa.array(day_gap_bin(f.days_to_end)))
    raise ConfigError(f"text.calendar: {word!r} unknown; choose from {sorted(CALENDAR)}")


CALENDAR = ("dow", "dom", "month", "end")


def _word(value: str) -> str:
    return re.sub(r"\s", "_", value) or "_"


def _categorical_words(f: Fields, col: str) -> pa.Array:
    return mapped(f.categorical(col), lambda v, c=col: f"{_word(c)}={_word(v)}")


def _constant_in_client(f: Fields, col: str) -> np.ndarray:
    """Per event: the client has one value of `col` on every transaction."""
    if col not in f._constant:
        f._constant[col] = (
            _constant_in_client(f._parent[0], col)[f._parent[1]] if f._parent is not None else _constant_over(f, col)
        )
    return f._constant[col]


def _constant_over(f: Fields, col: str) -> np.ndarray:
    codes = pc.dictionary_encode(f.categorical(col)).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    if not len(codes):
        return np.zeros(0, bool)
    starts = f.offsets[:-1][f.n_events > 0]
    lo, hi = np.minimum.reduceat(codes, starts), np.maximum.reduceat(codes, starts)
    const = np.zeros(len(f.client_ids), bool)
    const[f.n_events > 0] = lo == hi
    return np.repeat(const, f.n_events)


def fields_head(f: Fields) -> pa.Array:
    """The categorical values constant over the client's history (`channel_type=type2 `), else empty."""
    head = pa.array([""] * len(f.client_ids), pa.string())
    first = pa.array(f.offsets[:-1][f.n_events > 0])
    if not len(first) or not f.ctx.categorical:
        return head
    present = np.flatnonzero(f.n_events > 0)
    parts = []
    for col in f.ctx.categorical:
        const = _constant_in_client(f, col)
        words = mapped(f.categorical(col).take(first), lambda v, c=col: f"{_word(c)}={_word(v)}")
        parts.append(pc.if_else(pa.array(const[f.offsets[:-1][present]]), _join(words, " "), ""))
    joined = _join(*parts)
    out = np.array([""] * len(f.client_ids), dtype=object)
    out[present] = joined.to_pylist()
    return pa.array(out.tolist(), pa.string())


def fields_line(f: Fields) -> pa.Array:
    """`d0@14 m6011 a29 trx_category=WD_ATM_ROS`: when, MCC, amount bin, varying categoricals unless usual."""
    when = when_words(f)
    if f.ctx.calendar:
        when = _join(when, *(_calendar_words(f, w) for w in f.ctx.calendar), sep=" ")
    line = _join(when, _join("m", f.mcc_code), amount_words(f.ev["amount"].to_numpy(np.float64)), sep=" ")
    for col in f.ctx.categorical:
        value = _categorical_words(f, col)
        usual = f"{_word(col)}={_word(f.ctx.usual[col])}"
        skip = pc.or_(pc.equal(value, usual), pa.array(_constant_in_client(f, col)))
        line = _join(line, pc.if_else(skip, "", _join(" ", value)))
    return line


register(Format("fields", fields_head, fields_line))


# ----------------------------------------------------------------------------------------------- assembly


def group_by_mcc(fields: Fields, lines: pa.Array, keep: np.ndarray, client_of: np.ndarray) -> tuple:
    """Kept lines regrouped per (client, MCC): `<mcc>: item; item` lines, groups ordered by first use.

    Returns (group_lines, group_offsets) with group_offsets[k]:group_offsets[k+1] the groups of client k.
    """
    idx = np.flatnonzero(keep)
    mcc = fields.ev["mcc"].to_numpy(np.int64)[idx]
    cl = client_of[idx]
    frame = pd.DataFrame({"c": cl, "m": mcc, "i": idx})
    frame["g"] = frame.groupby(["c", "m"], sort=False).ngroup()
    frame = frame.sort_values(["g", "i"], kind="stable")  # ngroup numbers groups in order of first appearance
    bounds = np.flatnonzero(np.r_[True, frame["g"].to_numpy()[1:] != frame["g"].to_numpy()[:-1]])
    items = pa.ListArray.from_arrays(
        pa.array(np.r_[bounds, len(frame)].astype(np.int32)), lines.take(pa.array(frame["i"].to_numpy()))
    )
    first_of_group = frame["i"].to_numpy()[bounds]
    labels = fields.mcc.take(pa.array(first_of_group))
    group_lines = _join(labels, pc.binary_join(items, GROUP_ITEM_SEP), sep=": ")
    group_client = frame["c"].to_numpy()[bounds]
    n_clients = len(fields.client_ids)
    group_offsets = np.r_[0, np.cumsum(np.bincount(group_client, minlength=n_clients))]
    return group_lines, group_offsets


def assemble(fmt: Format, fields: Fields, head: pa.Array, lines: pa.Array, keep: np.ndarray | None = None) -> pa.Array:
    """Per-client texts from the head and the kept lines (keep: boolean mask over events; None keeps all)."""
    n_clients = len(fields.client_ids)
    client_of = np.repeat(np.arange(n_clients), fields.n_events)
    if keep is None:
        keep = np.ones(len(lines), bool)
    if fmt.grouped:
        body_lines, offsets = group_by_mcc(fields, lines, keep, client_of)
    else:
        body_lines = lines.filter(pa.array(keep))
        offsets = np.r_[0, np.cumsum(np.bincount(client_of[keep], minlength=n_clients))]
    body = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), body_lines), fmt.sep)
    return _join(head, body, fmt.tail)


def render(events: pd.DataFrame, fmt: str | Format, ctx: RenderContext) -> pd.Series:
    """Untruncated texts of every client in `events` (sorted by client_id, event_time), indexed by client_id."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    fields = Fields(events, ctx)
    texts = assemble(fmt, fields, fmt.head(fields), fmt.line(fields))
    return pd.Series(texts.to_pylist(), index=pd.Index(fields.client_ids, name="client_id"), dtype=object)


def render_client(events: pd.DataFrame, fmt: str | Format, ctx: RenderContext) -> str:
    """The text of one client's events (all rows of `events` belong to one client)."""
    events = events.sort_values("event_time", kind="stable")
    return render(events.assign(client_id=events["client_id"].iloc[0]), fmt, ctx).iloc[0]
