"""text and shards in bounded memory: chunked/parallel outputs equal the whole-table/single-writer ones."""

from __future__ import annotations

import dataclasses

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from canonical_data import canonical_events, canonical_run
from omegaconf import OmegaConf

from llm4trx import shards as shards_stage
from llm4trx import text as text_stage
from llm4trx import tokenizer as tokenizer_stage
from llm4trx.core.errors import DataError
from llm4trx.core.stage import stage_dir
from llm4trx.data.chunks import event_files, iter_client_chunks
from llm4trx.core.sections import DatasetSpec, TextSpec
from llm4trx.render.columns import ContextAccumulator, RenderContext
from llm4trx.render.formats import get_format
from llm4trx.lm.foundry_plugins import streaming_registration
from llm4trx.render.client_texts import SPECIAL_TOKENS, TEXT_COLUMNS, build_texts, token_stats
from llm4trx.render.tokencount import get_counter

OUTPUTS = ("train.jsonl", "val.jsonl", "test.jsonl", "stats.json")


def digest(folder: Path, names=OUTPUTS) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}


def whole_table(cfg, out: Path) -> None:
    """The unchunked text path (the stage before chunking): the whole table read, one build_texts call."""
    data = stage_dir(cfg, "prepare")
    events = pq.read_table(data / "events.parquet").to_pandas(
        types_mapper={pa.string(): pd.ArrowDtype(pa.string())}.get
    )
    events["client_id"] = events["client_id"].astype(str)
    splits = pd.read_parquet(data / "splits.parquet", columns=["client_id", "split"])
    splits["client_id"] = splits["client_id"].astype(str)
    fmt = get_format(cfg.text.format)
    ctx = RenderContext.from_events(events, DatasetSpec.from_config(cfg.dataset), TextSpec.from_config(cfg.text))
    counter = get_counter(str(cfg.text.count_tokenizer))
    frame = build_texts(events, fmt, ctx, counter, int(cfg.text.max_tokens) - SPECIAL_TOKENS)
    frame = frame.merge(splits, on="client_id", how="left")
    stats = {
        "format": fmt.name,
        "max_tokens": cfg.text.max_tokens,
        "count_tokenizer": str(cfg.text.count_tokenizer),
        "render_context": {
            "categorical": ctx.categorical,
            "mcc_names": ctx.mcc_names,
            "time_of_day": ctx.time_of_day,
            "usual": ctx.usual,
        },
        "splits": {},
        "augmented": {"enabled": False},
    }
    out.mkdir(parents=True)
    for split in ("train", "val", "test"):
        part = frame[frame["split"] == split]
        part[TEXT_COLUMNS].to_json(out / f"{split}.jsonl", orient="records", lines=True, force_ascii=False)
        stats["splits"][split] = token_stats(part)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")


@pytest.mark.parametrize(
    "schema,fmt",
    [
        ("rosbank", "fields"),
        ("rosbank", "flat"),
        ("age_pred", "fields"),
        ("age_pred", "compact"),
        ("gender", "grouped_mcc"),
    ],
)
def test_chunked_text_is_byte_identical_to_the_whole_table(tmp_path, schema, fmt):
    cfg = canonical_run(
        tmp_path, schema, [f"text={fmt}", "text.max_tokens=300", "text.chunk_events=37"], n_clients=50, max_events=160
    )
    out = text_stage.run(cfg)
    whole_table(cfg, tmp_path / "reference")
    assert digest(out) == digest(tmp_path / "reference")
    chunks = list(iter_client_chunks(event_files(stage_dir(cfg, "prepare") / "events.parquet"), ["client_id"], 37))
    assert len(chunks) > 20  # many chunks, each of whole clients
    firsts = [c.column("client_id")[0].as_py() for c in chunks]
    lasts = [c.column("client_id")[-1].as_py() for c in chunks]
    assert all(a < b for a, b in zip(lasts[:-1], firsts[1:]))


def test_events_as_a_directory_of_parts_in_name_order(tmp_path):
    cfg = canonical_run(
        tmp_path,
        "rosbank",
        ["text=compact", "text.max_tokens=200", "text.chunk_events=50"],
        n_clients=30,
        max_events=90,
    )
    single = text_stage.run(cfg)
    expected = digest(single)
    data = stage_dir(cfg, "prepare")
    table = pq.read_table(data / "events.parquet")
    (data / "events.parquet").unlink()
    parts = data / "events.parquet"
    parts.mkdir()
    cuts = [0, 1, 333, 334, 1000, table.num_rows]  # cut inside clients, a one-row part, an empty tail
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):  # names sort in order; written out of order
        pq.write_table(table.slice(a, b - a), parts / f"part-{i:05d}-x.snappy.parquet")
    (parts / "_SUCCESS").write_text("")
    (parts / ".part-00000-x.snappy.parquet.crc").write_text("crc")
    cfg = OmegaConf.merge(cfg, {"force": True})
    assert digest(text_stage.run(cfg)) == expected
    # the same parts named in the wrong order break the global sort: the contract error
    os.rename(parts / "part-00000-x.snappy.parquet", parts / "part-00009-x.snappy.parquet")
    with pytest.raises(DataError, match="not sorted by client_id, event_time"):
        text_stage.run(cfg)


def test_context_accumulated_over_batches_equals_the_whole_table():
    events = canonical_events("rosbank", 40, seed=3)
    events["channel_type"] = pd.Series(
        ["a", "b", None, "b", "a", None] * (len(events) // 6) + ["a"] * (len(events) % 6), dtype="string"
    )  # ties between a, b and NA
    events["currency"] = pd.Series(["x"] * len(events), dtype="string")
    dataset = DatasetSpec(categorical=["channel_type", "currency", "trx_category"], mcc_names="iso18245")
    text_cfg = TextSpec()
    for size in (1, 7, len(events)):
        acc = ContextAccumulator(dataset, text_cfg)
        for i in range(0, len(events), size):
            acc.update(events.iloc[i : i + size])
        assert acc.result() == RenderContext.from_events(events, dataset, text_cfg)
    with_seconds = events.assign(
        event_time=events["event_time"] + pd.to_timedelta((np.arange(len(events)) == 5).astype(int), "s")
    )
    acc = ContextAccumulator(dataset, text_cfg)
    for i in range(0, len(events), 100):
        acc.update(with_seconds.iloc[i : i + 100])
    assert (
        acc.result().time_of_day == "%H:%M:%S" == RenderContext.from_events(with_seconds, dataset, text_cfg).time_of_day
    )


# The peak is written by an atexit handler: a stage process ends with os._exit after its atexit handlers
# (core/cli.end_stage_process), so code after the stage's main would never run.
PEAK = """
import atexit, runpy, sys
out = sys.argv[1]
sys.argv = ["llm4trx.text", *sys.argv[2:]]
atexit.register(lambda: open(out, "w").write([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]))
runpy.run_module("llm4trx.text", run_name="__main__", alter_sys=True)
"""


def text_peak_kb(tmp_path: Path, n_clients: int, chunk_events: int) -> tuple[int, int]:
    root = tmp_path / f"n{n_clients}_c{chunk_events}"
    cfg = canonical_run(root, "rosbank", [], n_clients=n_clients, min_events=150, max_events=250)
    n_events = pq.ParquetFile(stage_dir(cfg, "prepare") / "events.parquet").metadata.num_rows
    peak = root / "peak"
    env = {**os.environ, "PYTHONPATH": str(Path(text_stage.__file__).parents[1])}
    subprocess.run(
        [
            sys.executable,
            "-c",
            PEAK,
            str(peak),
            f"paths.output_root={root}",
            "progress=false",
            "dataset.schema=rosbank",
            "text=fields",
            "text.max_tokens=128",
            f"text.chunk_events={chunk_events}",
            "hydra/job_logging=disabled",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    return n_events, int(peak.read_text())


@pytest.mark.slow
def test_text_memory_does_not_grow_with_the_dataset(tmp_path):
    """Peak RSS of `python -m llm4trx.text` at n and 3n events, 50k-event chunks: the growth per added event
    stays far below what holding the table costs (the whole-table path: ~300 B per event; one chunk of the
    3n table here: +300 B per event measured the same way)."""
    small, peak_small = text_peak_kb(tmp_path, 2000, 50_000)
    large, peak_large = text_peak_kb(tmp_path, 6000, 50_000)
    whole, peak_whole = text_peak_kb(tmp_path, 6000, 10**9)  # one chunk = the whole table in memory
    per_event = (peak_large - peak_small) * 1024 / (large - small)
    per_event_whole = (peak_whole - peak_small) * 1024 / (whole - small)
    print(f"text peak growth: {per_event:.1f} B/event chunked, {per_event_whole:.1f} B/event whole table")
    assert per_event < 40, (per_event, per_event_whole)
    assert per_event_whole > 3 * max(per_event, 10), (per_event, per_event_whole)  # the test can fail


# ------------------------------------------------------------------------------------------------ shards


def test_line_ranges(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"a\nbb\nccc\nd\ne")
    assert shards_stage.line_ranges(path, 2) == [(0, 5, 1), (5, 11, 3), (11, 12, 5)]
    assert shards_stage.line_ranges(path, 2, block=3) == [(0, 5, 1), (5, 11, 3), (11, 12, 5)]
    path.write_bytes(b"a\nbb\n")
    assert shards_stage.line_ranges(path, 2) == [(0, 5, 1)]
    assert shards_stage.line_ranges(path, 1, block=1) == [(0, 2, 1), (2, 5, 2)]
    path.write_bytes(b"")
    assert shards_stage.line_ranges(path, 3) == [(0, 0, 1)]


@pytest.fixture(scope="module")
def texts_and_tokenizer(tmp_path_factory):
    cfg = canonical_run(
        tmp_path_factory.mktemp("par"),
        "rosbank",
        [
            "text=compact",
            "tokenizer.vocab_size=400",
            "max_seq_len=64",
            "text.max_tokens=null",
            "shards.samples_per_part=7",
        ],
        n_clients=60,
        max_events=40,
    )
    text_stage.run(cfg)
    tokenizer_stage.run(cfg)
    return cfg


def read_back(folder: Path):
    from streaming import StreamingDataset
    from fixtures_lm import clean_stale_streaming_memory

    clean_stale_streaming_memory()
    with streaming_registration():  # other xdist workers' stages may be registering theirs
        data = StreamingDataset(local=str(folder), shuffle=False, batch_size=1)
    return [(data[i]["client_id"], data[i]["tokens"].tolist()) for i in range(len(data))]


def test_parallel_parts_merged_read_back_as_one_writer(texts_and_tokenizer, tmp_path):
    from llmfoundry.data.text_data import StreamingTextDataset

    from llm4trx.lm.tokenizers import load_tokenizer

    cfg = texts_and_tokenizer
    tok_dir, text_dir = stage_dir(cfg, "tokenizer"), stage_dir(cfg, "text")
    tok = load_tokenizer(tok_dir, need=("bos_token", "eos_token"))
    for split in ("train", "val"):
        single = shards_stage.write_split(text_dir / f"{split}.jsonl", tmp_path / "single" / split, tok, 64, False)
        par = shards_stage.write_split_parallel(
            text_dir / f"{split}.jsonl", tmp_path / "par" / split, tok_dir, 64, 7, 2, tok
        )
        n_lines = len((text_dir / f"{split}.jsonl").read_text().splitlines())
        assert par["parts"] == -(-n_lines // 7) and {k: par[k] for k in single} == single
        expected = read_back(tmp_path / "single" / split)
        assert read_back(tmp_path / "par" / split) == expected and len(expected) == single["samples"]
        assert split == "val" or (par["parts"] > 4 and single["truncated"] > 0)
        index = json.loads((tmp_path / "par" / split / "index.json").read_text())
        assert index["shards"][0]["raw_data"]["basename"].startswith("part-00000/")
        with streaming_registration():
            foundry = StreamingTextDataset(
                tokenizer=tok,
                max_seq_len=64,
                token_encoding_type="int32",
                local=str(tmp_path / "par" / split),
                shuffle=False,
                batch_size=1,
            )
        assert [foundry[i].tolist() for i in range(len(foundry))] == [t for _, t in expected]


def test_shards_layout_does_not_depend_on_workers(texts_and_tokenizer):
    cfg = texts_and_tokenizer
    files = {}
    for workers in (1, 2):
        out = shards_stage.run(OmegaConf.merge(cfg, {"force": True, "shards": {"workers": workers}}))
        files[workers] = {
            str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "_SUCCESS.json"
        }
    assert files[1] == files[2]
    assert sum(name.endswith("index.json") and "part-" in name for name in files[1]) > 4


@pytest.mark.parametrize("schema", ["rosbank", "gender"])
def test_line_cap_renders_fewer_lines_and_gives_the_same_texts(schema, monkeypatch):
    """Rendering only each client's newest lines (line_cap), with the clients whose counting window reaches
    past them redone whole, and counting a tighter window first (TIGHT_WINDOW, the full one where it falls
    short): the same rows as rendering and counting every line, for every format, cap and tightness."""
    from llm4trx.render import client_texts as texts_mod
    from llm4trx.render.formats import FORMATS

    events = canonical_events(schema, 30, seed=5, min_events=1, max_events=120)
    events["client_id"] = events["client_id"].astype(str)
    dataset = DatasetSpec(
        categorical=[c for c in ("channel_type", "currency", "trx_category", "tr_type") if c in events.columns],
        mcc_names="iso18245",
    )
    ctx = RenderContext.from_events(events, dataset, TextSpec())
    # the fields format also with calendar words only where they change: a line then depends on the line before
    # (and `same` on a line on the client's earlier transactions of its MCC, hidden lines included)
    marks = dataclasses.replace(ctx, calendar=("end", "month", "same"), calendar_on_change=True)
    for name, fmt, ctx in [*((n, f, ctx) for n, f in FORMATS.items()), ("fields", FORMATS["fields"], marks)]:
        counter = get_counter("fields" if name == "fields" else "qwen")
        budget = 120 if name == "fields" else 300
        monkeypatch.setattr(texts_mod, "TIGHT_WINDOW", 1.0)
        reference = build_texts(events, fmt, ctx, counter, budget)
        ratio = texts_mod.estimate_ratio(events, fmt, ctx, counter)
        cap = texts_mod.estimate_line_cap(events, fmt, ctx, counter, budget, ratio)
        assert cap < events.groupby("client_id").size().max()  # the cap hides lines of some clients
        for tight in (0.3, 0.85, 1.0):
            monkeypatch.setattr(texts_mod, "TIGHT_WINDOW", tight)
            for line_cap in (1, 3, cap, None):
                got = build_texts(events, fmt, ctx, counter, budget, ratio=ratio, line_cap=line_cap)
                pd.testing.assert_frame_equal(got, reference, check_exact=True)


def test_a_bad_line_in_a_worker_part_names_its_file_and_row(texts_and_tokenizer, tmp_path):
    from llm4trx.lm.tokenizers import load_tokenizer

    cfg = texts_and_tokenizer
    tok_dir = stage_dir(cfg, "tokenizer")
    lines = (stage_dir(cfg, "text") / "train.jsonl").read_text().splitlines()
    lines[17] = '{"client_id": "x"}'  # row 18: third part of 7 lines
    src = tmp_path / "train.jsonl"
    src.write_text("\n".join(lines) + "\n")
    tok = load_tokenizer(tok_dir, need=("bos_token", "eos_token"))
    for workers in (1, 2):
        with pytest.raises(DataError, match=r"train.jsonl, row 18: not a text record"):
            shards_stage.write_split_parallel(src, tmp_path / f"w{workers}", tok_dir, 64, 7, workers, tok)
