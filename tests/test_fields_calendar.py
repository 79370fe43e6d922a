"""text.calendar: the fields format's optional calendar words (day of week, day of month, month, days to the end,
days since the same MCC)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from canonical_data import SCHEMAS, canonical_events

from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import DatasetSpec, TextSpec
from llm4trx.render.columns import RenderContext
from llm4trx.render.formats import render, render_client


def context(schema, *overrides):
    cfg = compose(["paths.output_root=/nonexistent", *SCHEMAS[schema], "text=fields", *overrides])
    events = canonical_events(schema, n_clients=6, seed=3, max_events=25)
    return events, RenderContext.from_events(
        events, DatasetSpec.from_config(cfg.dataset), TextSpec.from_config(cfg.text)
    )


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_calendar_words_follow_the_when_word_with_the_right_values(schema):
    events, plain = context(schema, "text.calendar=[]")  # the smoke preset's recency marks off
    _, ctx = context(schema, "text.calendar=[dow,dom,month,end]", "text.calendar_on_change=false")
    assert ctx.calendar == ("dow", "dom", "month", "end") and plain.calendar == ()
    texts, plain_texts = render(events, "fields", ctx), render(events, "fields", plain)
    for client, ev in events.groupby("client_id", sort=True):
        text = texts[client]
        assert text == render_client(ev, "fields", ctx)  # bulk and single-client rendering agree
        plain_lines = plain_texts[client].split("\n")
        lines = text.split("\n")
        assert len(lines) == len(ev) == len(plain_lines)
        last = ev["event_time"].dt.normalize().max()
        for i, (line, plain_line, t) in enumerate(zip(lines, plain_lines, ev["event_time"])):
            words, plain_words = line.split(" "), plain_line.split(" ")
            # the `when` word (after the header's client-constant `col=value` words on the first line), then
            # the four calendar words, then the plain line's rest
            when = next(j for j, w in enumerate(plain_words) if re.match(r"d\d", w))
            assert words[when] == plain_words[when]
            assert words[when + 1 : when + 4] == [f"w{t.dayofweek + 1}", f"D{t.day}", f"M{t.month}"]
            to_end, end = (last - t.normalize()).days, words[when + 4]  # `e<lo>-<hi>`, `e<d>` or `e181+`
            lo, _, hi = end[1:].rstrip("+").partition("-")
            assert end[0] == "e" and int(lo) <= to_end and (end.endswith("+") or to_end <= int(hi or lo)), (end, to_end)
            assert words[: when + 1] + words[when + 5 :] == plain_words  # nothing else changes


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_calendar_on_change_keeps_a_word_only_where_its_value_changes(schema):
    events, every = context(schema, "text.calendar=[end,month]", "text.calendar_on_change=false")
    _, marks = context(schema, "text.calendar=[end,month]", "text.calendar_on_change=true")
    assert marks.calendar_on_change and not every.calendar_on_change
    texts, every_texts = render(events, "fields", marks), render(events, "fields", every)
    dropped = 0
    for client, ev in events.groupby("client_id", sort=True):
        assert texts[client] == render_client(ev, "fields", marks)  # bulk and single-client rendering agree
        previous = (None, None)
        for line, full in zip(texts[client].split("\n"), every_texts[client].split("\n"), strict=True):
            full_words = full.split(" ")
            when = next(j for j, w in enumerate(full_words) if re.match(r"d\d", w))
            end, month = full_words[when + 1 : when + 3]
            kept = [w for w, before in ((end, previous[0]), (month, previous[1])) if w != before]
            assert line.split(" ") == full_words[: when + 1] + kept + full_words[when + 3 :]
            dropped += 2 - len(kept)
            previous = (end, month)
    assert dropped > len(events) // 2  # most transactions carry neither word


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_same_is_the_day_gap_bin_since_the_previous_transaction_of_the_same_mcc(schema):
    events, plain = context(schema, "text.calendar=[]")
    _, ctx = context(schema, "text.calendar=[same]", "text.calendar_on_change=false")
    _, marks = context(schema, "text.calendar=[same]", "text.calendar_on_change=true")
    assert render(events, "fields", marks).equals(render(events, "fields", ctx))  # on every transaction, marks or not
    texts, plain_texts = render(events, "fields", ctx), render(events, "fields", plain)
    bins = [0, 1, 2, 3, 4, 6, 8, 11, 15, 22, 31, 61, 91, 181]  # the `when` word's day-gap bins
    repeats = 0
    for client, ev in events.groupby("client_id", sort=True):
        assert texts[client] == render_client(ev, "fields", ctx)
        days = ev["event_time"].dt.normalize()
        since = days.groupby(ev["mcc"].to_numpy()).diff().dt.days  # NaN on the first of an MCC
        for line, plain_line, gap in zip(texts[client].split("\n"), plain_texts[client].split("\n"), since):
            words, plain_words = line.split(" "), plain_line.split(" ")
            # right after the MCC word
            mcc = next(j for j, w in enumerate(plain_words) if re.fullmatch(r"m\d+", w))
            if pd.isna(gap):
                assert words[mcc + 1] == "snew"
            else:
                lo = max(b for b in bins if b <= gap)
                assert re.fullmatch(rf"s{lo}(-\d+|\+)?", words[mcc + 1]), (words[mcc + 1], gap)
                repeats += 1
            assert words[: mcc + 1] + words[mcc + 2 :] == plain_words
    assert 0 < repeats < len(events)  # the test sees both: gaps and `snew`


def test_a_subset_of_newest_lines_writes_the_words_of_the_whole_history():
    """build_texts(line_cap=...) renders only each client's newest lines (Fields.subset): `same` there still counts
    the days since the same MCC's previous transaction, in the lines not rendered too."""
    from llm4trx.render.columns import Fields
    from llm4trx.render.formats import _calendar_words

    events, ctx = context("rosbank", "text.calendar=[same,end]", "text.calendar_on_change=false")
    events["mcc"] = np.where(np.arange(len(events)) % 5 == 0, 4899, 5411)  # 4899 every 5th line: gaps hidden
    whole = Fields(events, ctx)
    rows = np.concatenate(
        [np.arange(hi - min(3, hi - lo), hi) for lo, hi in zip(whole.offsets[:-1], whole.offsets[1:])]
    )
    sub = whole.subset(rows)
    for word in ("same", "end"):
        assert _calendar_words(sub, word).to_pylist() == _calendar_words(whole, word).take(rows).to_pylist()
    alone = Fields(events.iloc[rows], ctx)  # the same lines without their history: other `same` words
    assert _calendar_words(alone, "same").to_pylist() != _calendar_words(sub, "same").to_pylist()


def test_an_unknown_calendar_word_or_another_format_is_one_clear_error():
    with pytest.raises(
        ConfigError, match=r"text.calendar\[0\]='weekday': should be 'dow', 'dom', 'month', 'end' or 'same'"
    ):
        context("rosbank", "text.calendar=[weekday]")
    cfg = compose(["paths.output_root=/nonexistent", "text=flat", "+text.calendar=[dow]"])
    with pytest.raises(ConfigError, match="text.calendar is a fields-format option"):
        RenderContext.from_events(
            canonical_events("rosbank", n_clients=2, max_events=6),
            DatasetSpec.from_config(cfg.dataset),
            TextSpec.from_config(cfg.text),
        )
