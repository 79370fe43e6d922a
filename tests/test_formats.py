"""Every text format renders every dataset schema correctly (vectorised path = per-client path)."""

from __future__ import annotations

import functools
import html.parser
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from canonical_data import SCHEMAS, canonical_events

from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import DatasetSpec, TextSpec
from llm4trx.render.columns import RenderContext, amount_2dp, amount_short, Fields
from llm4trx.render.formats import FORMATS, amount_bin, amount_words, get_format, render, render_client

ALL_FORMATS = ["flat", "compact", "grouped_mcc", "json", "yaml", "html", "markdown", "fields"]


@functools.lru_cache(maxsize=None)
def context(schema, *overrides):
    # text=fields: plain field words (the default preset's text adds recency marks, tests/test_fields_calendar.py)
    cfg = compose(["paths.output_root=/nonexistent", *SCHEMAS[schema], "text=fields", *overrides])
    events = canonical_events(schema, n_clients=6, seed=3, max_events=25)
    return events, RenderContext.from_events(
        events, DatasetSpec.from_config(cfg.dataset), TextSpec.from_config(cfg.text)
    )


class TableRows(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def test_registry_has_every_format_and_a_config_each():
    assert sorted(FORMATS) == sorted(ALL_FORMATS)
    for name in ALL_FORMATS:
        assert compose([f"text={name}"]).text.format == name


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(
        ConfigError, match="known formats: compact, fields, flat, grouped_mcc, html, json, markdown, yaml"
    ):
        get_format("csv")


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
@pytest.mark.parametrize("name", ALL_FORMATS)
def test_format_renders_every_event_of_every_schema(schema, name):
    events, ctx = context(schema)
    events = events.copy()
    texts = render(events, name, ctx)
    assert list(texts.index) == sorted(events["client_id"].unique())
    for client_id, text in texts.items():
        ev = events[events["client_id"] == client_id].reset_index(drop=True)
        n = len(ev)
        assert text == render_client(ev, name, ctx)  # bulk and single-client rendering agree
        if name == "fields":
            check_fields_text(text, ev, ctx)
            continue
        assert f"{n}" in text.split("\n")[0]  # the header states the number of transactions
        if name == "json":
            doc = json.loads(text)
            assert len(doc["events"]) == n
            assert [e["amount"] for e in doc["events"]] == pytest.approx(ev["amount"].round(2).tolist())
            for col in ctx.categorical:
                assert [e[col] for e in doc["events"]] == ev[col].fillna("NA").tolist()
        elif name == "yaml":
            doc = yaml.safe_load(text)
            assert len(doc["events"]) == n and doc["transactions"] == n
            assert [e["amount"] for e in doc["events"]] == pytest.approx(ev["amount"].round(2).tolist())
            for col in ctx.categorical:
                assert [e[col] for e in doc["events"]] == ev[col].fillna("NA").tolist()
        elif name == "html":
            parser = TableRows()
            parser.feed(text)
            rows = [r for r in parser.rows if r]
            assert len(rows) == n
            assert [float(r[2]) for r in rows] == pytest.approx(ev["amount"].tolist(), abs=0.005)
        elif name == "markdown":
            rows = [line for line in text.split("\n") if line.startswith("| ") and not line.startswith("| date")]
            assert len(rows) == n
        elif name == "flat":
            lines = text.split("\n")
            assert len(lines) == n + 1 and "|" in lines[0]
            assert lines[-1].startswith(str(ev["event_time"].iloc[-1].date()))
            assert f"{ev['amount'].iloc[-1]:.2f}" in lines[-1]
        elif name == "compact":
            lines = text.split("\n")
            assert len(lines) == n + 2
            gaps = ev["event_time"].dt.normalize().diff().dt.days.fillna(0).astype(int).tolist()
            assert [int(line.split(" ")[0]) for line in lines[2:]] == gaps
        elif name == "grouped_mcc":
            body = text.split("\n")[1:]
            assert len(body) == ev["mcc"].nunique()
            assert sum(len(line.split("; ")) for line in body) == n
        assert "target" not in text


def test_mcc_descriptions_or_codes():
    events, named = context("rosbank")
    _, codes = context("rosbank", "text.mcc_descriptions=false")
    grocery = events[events["mcc"] == 5411]["client_id"].iloc[0]
    assert "Groceries and supermarkets" in render(events, "flat", named)[grocery]
    assert ", 5411, " in render(events, "flat", codes)[grocery]
    events, anonymous = context("age_pred")  # dataset.mcc_names=null: codes even with descriptions on
    assert not anonymous.mcc_names


def test_time_of_day_only_where_the_data_has_it():
    assert context("rosbank")[1].time_of_day == ""
    assert context("gender")[1].time_of_day == "%H:%M:%S"


@pytest.mark.parametrize("time_of_day", ["%H:%M:%S", "%H:%M"])
def test_dates_and_clock_times_are_what_strftime_writes(time_of_day):
    """The fixed-width path (date and clock gathered from tables) against pandas' strftime, over pre-1970 times,
    leap days, midnight and the last second of a day; NaT takes the general path."""
    rng = np.random.default_rng(0)
    times = pd.to_datetime(rng.integers(-2 * 10**9, 2 * 10**9, 5000), unit="s")
    edges = ["2020-02-29 00:00:00", "2019-12-31 23:59:59", "1969-12-31 23:59:59.5", "2000-01-01 12:00:00"]
    times = pd.Series([*times, *pd.to_datetime(edges, format="ISO8601")])
    events = pd.DataFrame({"client_id": "c", "event_time": times})
    ctx = RenderContext((), False, time_of_day, {}, ())
    fields = Fields(events, ctx)
    assert fields.datetime.to_pylist() == times.dt.strftime("%Y-%m-%d " + time_of_day).tolist()
    assert fields.clock.to_pylist() == times.dt.strftime(time_of_day).tolist()
    with_nat = pd.Series(pd.to_datetime(["2020-01-01 10:30:00", None]))
    general = Fields(pd.DataFrame({"client_id": "c", "event_time": with_nat}), ctx).datetime.to_pylist()
    assert general[0] == "2020-01-01 10:30" + ":00" * time_of_day.endswith("%S") and general[1].startswith("NaT ")


def test_amounts_keep_sensible_precision():
    values = np.array([1234.5, 0.07, -56.789, 2_000_000.0, 999.99, 12.0, 123456.0])
    assert amount_2dp(values).to_pylist() == ["1234.50", "0.07", "-56.79", "2000000.00", "999.99", "12.00", "123456.00"]
    assert amount_short(values).to_pylist() == ["1.23k", "0.07", "-56.8", "2M", "1k", "12", "123k"]


def test_compact_is_at_most_half_of_flat_in_tokens():
    from llm4trx.render.tokencount import get_counter

    counter = get_counter("qwen")
    events, ctx = context("rosbank")
    flat = counter.count(render(events, "flat", ctx).tolist()).sum()
    compact = counter.count(render(events, "compact", ctx).tolist()).sum()
    assert compact <= 0.5 * flat


def check_fields_text(text, ev, ctx):
    """`fields`: one whitespace-free word per field value; every field of every event recoverable."""
    lines = text.split("\n")
    constant = {c: ev[c].fillna("NA").nunique() == 1 for c in ctx.categorical}
    head_words = [f"{c}={ev[c].fillna('NA').iloc[0]}" for c in ctx.categorical if constant[c]]
    assert lines[0].split()[: len(head_words)] == head_words  # client-constant values once, in the header
    lines[0] = " ".join(lines[0].split()[len(head_words) :])
    assert len(lines) == len(ev)
    gaps = ev["event_time"].dt.normalize().diff().dt.days.fillna(0).astype(int).to_numpy()
    for line, gap, row in zip(lines, gaps, ev.itertuples()):
        words = line.split(" ")
        when, mcc, amount, rest = words[0], words[1], words[2], words[3:]
        day = when.split("@")[0][1:]
        lo, _, hi = day.rstrip("+").partition("-")
        assert int(lo) <= gap and (day.endswith("+") or gap <= int(hi or lo)), (when, gap)
        if ctx.time_of_day:
            assert int(when.split("@")[1]) == row.event_time.hour
        else:
            assert "@" not in when
        assert mcc == f"m{row.mcc}"
        assert amount == (
            "a0z" if row.amount == 0 else f"a{'-' if row.amount < 0 else ''}{amount_bin(np.array([row.amount]))[0]}"
        )
        expected = [
            f"{c}={v}"
            for c in ctx.categorical
            if not constant[c]
            for v in [("NA" if pd.isna(getattr(row, c)) else getattr(row, c))]
            if v != ctx.usual[c]
        ]
        assert rest == expected


def test_fields_amount_bins_are_log_spaced_with_stated_resolution():
    values = np.array([1.0, 1.33, 1.34, 10.0, 999.99, 1000.0, 0.5, 2e6])
    k = amount_bin(values)
    assert list(k[:6]) == [0, 0, 1, 8, 23, 24]
    assert (10 ** (k / 8) <= values * (1 + 1e-12)).all() and (values < 10 ** ((k + 1) / 8)).all()
    assert amount_words(np.array([-56.0, 0.0, 56.0])).to_pylist() == ["a-13", "a0z", "a13"]


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_fields_costs_at_most_six_words_per_transaction(schema):
    from llm4trx.render.tokencount import get_counter

    events, ctx = context(schema)
    words = get_counter("fields").count(render(events, "fields", ctx).tolist()).sum()
    assert words <= 6 * len(events)
    if schema == "age_pred":  # no categoricals, no time: day gap, mcc, amount
        assert words == 3 * len(events)
