"""Stage `text`: splits, truncation keeping the most recent events within budget, stats, reruns, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from canonical_data import canonical_events, canonical_run

from llm4trx import text as text_stage
from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError, DataError, StageInputMissing
from llm4trx.core.sections import DatasetSpec, TextSpec
from llm4trx.render.columns import RenderContext
from llm4trx.render.formats import render
from llm4trx.core.stage import read_success, stage_dir
from llm4trx.render.tokencount import get_counter


def read_split(folder, split):
    return pd.read_json(folder / f"{split}.jsonl", lines=True, dtype={"client_id": str})


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory):
    cfg = canonical_run(
        tmp_path_factory.mktemp("flat"), "rosbank", ["text=flat", "text.max_tokens=400"], n_clients=30, max_events=80
    )
    return cfg, text_stage.run(cfg)


def test_splits_and_jsonl_columns(flat_run):
    cfg, out = flat_run
    splits = pd.read_parquet(stage_dir(cfg, "prepare") / "splits.parquet")
    seen = {}
    for split in ("train", "val", "test"):
        frame = read_split(out, split)
        assert list(frame.columns) == ["client_id", "text", "n_events", "n_events_kept", "n_tokens"]
        seen[split] = set(frame["client_id"])
        assert seen[split] == set(splits.loc[splits["split"] == split, "client_id"])
    assert not (seen["test"] & (seen["train"] | seen["val"]))  # test clients only in test.jsonl


def test_truncation_keeps_the_most_recent_events_within_budget(flat_run):
    cfg, out = flat_run
    counter = get_counter("qwen")
    events = pd.read_parquet(stage_dir(cfg, "prepare") / "events.parquet")
    ctx = RenderContext.from_events(events, DatasetSpec.from_config(cfg.dataset), TextSpec.from_config(cfg.text))
    full = render(events, "flat", ctx)
    frame = pd.concat([read_split(out, s) for s in ("train", "val", "test")])
    assert (frame["n_tokens"] <= 400 - text_stage.SPECIAL_TOKENS).all()
    assert (frame["n_tokens"].to_numpy() == counter.count(frame["text"].tolist())).all()  # exact counts
    truncated = frame[frame["n_events_kept"] < frame["n_events"]]
    assert len(truncated) >= 5
    for row in truncated.itertuples():
        lines = full[row.client_id].split("\n")
        kept = row.text.split("\n")
        assert kept[0] == lines[0]  # header of the whole history
        assert kept[1:] == lines[len(lines) - row.n_events_kept :]  # the newest events, in order
        one_more = "\n".join([lines[0], *lines[len(lines) - row.n_events_kept - 1 :]])
        assert (
            counter.count([one_more])[0] > 400 - text_stage.SPECIAL_TOKENS
        )  # no older event fits (bos + eos in the budget)
    untouched = frame[frame["n_events_kept"] == frame["n_events"]]
    assert all(untouched["text"].to_numpy() == full[untouched["client_id"]].to_numpy())


def test_stats_json(flat_run):
    _, out = flat_run
    stats = json.loads((out / "stats.json").read_text())
    assert stats["format"] == "flat" and stats["max_tokens"] == 400 and stats["count_tokenizer"] == "qwen"
    for split in ("train", "val", "test"):
        s = stats["splits"][split]
        frame = read_split(out, split)
        assert s["n_clients"] == len(frame) and s["n_events_kept"] == frame["n_events_kept"].sum()
        assert s["tokens"]["max"] == frame["n_tokens"].max()
        assert s["tokens"]["p50"] <= s["tokens"]["p90"] <= s["tokens"]["p95"] <= s["tokens"]["p99"] <= 400
        assert s["tokens_per_transaction"] == pytest.approx(frame["n_tokens"].sum() / frame["n_events_kept"].sum())
        assert 0 < s["line_tokens_per_transaction"] < s["tokens_per_transaction"]


def test_rerun_skips_and_force_rebuilds(flat_run, capsys):
    cfg, out = flat_run
    before = read_success(out)
    assert text_stage.run(cfg) == out and read_success(out) == before
    cfg.force = True
    text_stage.run(cfg)
    assert read_success(out)["finished_at"] >= before["finished_at"] and (out / "train.jsonl").is_file()
    cfg.force = False


@pytest.mark.parametrize("name", ["compact", "grouped_mcc", "json"])
def test_every_format_respects_the_budget_exactly(tmp_path, name):
    cfg = canonical_run(tmp_path, "gender", [f"text={name}", "text.max_tokens=300"], n_clients=12, max_events=60)
    out = text_stage.run(cfg)
    frame = pd.concat([read_split(out, s) for s in ("train", "val", "test")])
    assert len(frame) == 12 and (frame["n_tokens"] <= 300).all()
    assert (frame["n_tokens"].to_numpy() == get_counter("qwen").count(frame["text"].tolist())).all()
    assert (frame["n_events_kept"] < frame["n_events"]).any()


def test_missing_data_unknown_format_and_empty_events(tmp_path):
    with pytest.raises(StageInputMissing, match="prepare"):
        text_stage.run(compose([f"paths.output_root={tmp_path}"]))
    with pytest.raises(ConfigError, match="text.format='csv': should be 'compact', 'fields', 'flat'"):
        text_stage.run(compose([f"paths.output_root={tmp_path}", "text.format=csv"]))
    cfg = canonical_run(tmp_path, "rosbank", events=canonical_events("rosbank", 3).iloc[:0])
    with pytest.raises(DataError, match="events.parquet: no events"):
        text_stage.run(cfg)
    assert not stage_dir(cfg, "text").exists() and not list(stage_dir(cfg, "text").parent.glob(".text*"))


def test_missing_column_and_budget_below_header(tmp_path):
    cfg = canonical_run(tmp_path, "rosbank", events=canonical_events("rosbank", 3).drop(columns="currency"))
    with pytest.raises(DataError, match="column 'currency'"):
        text_stage.run(cfg)
    cfg = canonical_run(tmp_path / "b", "rosbank", ["text=flat", "text.max_tokens=5"], n_clients=3)
    with pytest.raises(ConfigError, match="smaller than the 'flat' header"):
        text_stage.run(cfg)
    assert not stage_dir(cfg, "text").exists()


def test_fields_budget_is_exact_in_words_and_counts_bos_eos(tmp_path):
    cfg = canonical_run(
        tmp_path, "rosbank", ["text=fields", "tokenizer=fields", "text.max_tokens=120"], n_clients=12, max_events=60
    )
    out = text_stage.run(cfg)
    frame = pd.concat([read_split(out, s) for s in ("train", "val", "test")])
    words = frame["text"].map(lambda t: len(t.split())).to_numpy()
    assert (frame["n_tokens"].to_numpy() == words).all()
    assert (frame["n_tokens"] <= 120 - text_stage.SPECIAL_TOKENS).all()  # bos + text + eos <= max_tokens
    truncated = frame[frame["n_events_kept"] < frame["n_events"]]
    assert len(truncated) and (truncated["n_tokens"] > 120 - 2 - 6).all()  # nothing more would have fit
