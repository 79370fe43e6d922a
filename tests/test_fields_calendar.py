"""text.calendar: the fields format's optional calendar words (day of week, day of month, month, days to the end)."""

from __future__ import annotations

import re

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


def test_an_unknown_calendar_word_or_another_format_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"text.calendar\[0\]='weekday': should be 'dow', 'dom', 'month' or 'end'"):
        context("rosbank", "text.calendar=[weekday]")
    cfg = compose(["paths.output_root=/nonexistent", "text=flat", "+text.calendar=[dow]"])
    with pytest.raises(ConfigError, match="text.calendar is a fields-format option"):
        RenderContext.from_events(
            canonical_events("rosbank", n_clients=2, max_events=6),
            DatasetSpec.from_config(cfg.dataset),
            TextSpec.from_config(cfg.text),
        )
