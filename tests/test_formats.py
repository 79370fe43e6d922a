"""Every text format renders every dataset schema correctly (vectorised path = per-client path)."""

from __future__ import annotations

import functools
import html.parser
import json

import numpy as np
import pytest
import yaml
from canonical_data import SCHEMAS, canonical_events

from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError
from llm4trx.render.formats import FORMATS, RenderContext, amount_2dp, amount_short, get_format, render, render_client

ALL_FORMATS = ["flat", "compact", "grouped_mcc", "json", "yaml", "html", "markdown"]


@functools.lru_cache(maxsize=None)
def context(schema, *overrides):
    cfg = compose(["paths.output_root=/nonexistent", *SCHEMAS[schema], *overrides])
    events = canonical_events(schema, n_clients=6, seed=3, max_events=25)
    return events, RenderContext.from_events(events, cfg.dataset, cfg.text)


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
    with pytest.raises(ConfigError, match="known formats: compact, flat, grouped_mcc, html, json, markdown, yaml"):
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


def test_amounts_keep_sensible_precision():
    values = np.array([1234.5, 0.07, -56.789, 2_000_000.0, 999.99, 12.0, 123456.0])
    assert amount_2dp(values).to_pylist() == ["1234.50", "0.07", "-56.79", "2000000.00", "999.99", "12.00",
                                              "123456.00"]
    assert amount_short(values).to_pylist() == ["1.23k", "0.07", "-56.8", "2M", "1k", "12", "123k"]


def test_compact_is_at_most_half_of_flat_in_tokens():
    from llm4trx.render.tokencount import get_counter

    counter = get_counter("qwen")
    events, ctx = context("rosbank")
    flat = counter.count(render(events, "flat", ctx).tolist()).sum()
    compact = counter.count(render(events, "compact", ctx).tolist()).sum()
    assert compact <= 0.5 * flat
