"""Stage `text`: data/ -> text/{train,val,test}.jsonl + text/stats.json (`python -m llm4trx.text`).

Each client's history is rendered in the configured format (llm4trx.render.formats) and truncated to
`text.max_tokens` tokens of the counting tokenizer, keeping the MOST RECENT transactions
(llm4trx.render.client_texts.build_texts). Test clients are written to test.jsonl (embedding only; never in
pretraining files).

Bounded memory: data/events.parquet (a file or a directory of parts) is read twice in record batches,
never whole. Pass 1 (client_id, event_time, categoricals) checks the prepare contract (sorted, every client
has a split) and computes the dataset-level RenderContext; pass 2 renders chunks of about
`text.chunk_events` events cut at client boundaries (render_chunk) and appends each chunk's rows to the
split files. A client's text depends only on its events and the context, so the output is the same
whatever the chunk size.

`engine=spark` renders the chunks on Spark tasks with the same render_chunk, context and window ratio, and
concatenates their parts into the same single files (llm4trx.render.spark_text); the engine is not hashed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig
from tqdm import tqdm

from llm4trx.core.cli import stage_main
from llm4trx.core.errors import ConfigError, DataError
from llm4trx.core.registry import mixing
from llm4trx.core.sections import DatasetSpec, MixSpec, TextSpec
from llm4trx.core.spark import engine_of, session
from llm4trx.core.stage import read_success, require, run_stage
from llm4trx.data.splits import read_splits, splits_path
from llm4trx.data.text_files import text_path, write_stats
from llm4trx.data.chunks import (
    BATCH_ROWS,
    check_event_columns,
    event_files,
    events_path,
    iter_batches,
    iter_client_chunks,
    to_frame,
)
from llm4trx.data.splits import SPLITS
from llm4trx.generation.mix import mix_into_train
from llm4trx.render.columns import ContextAccumulator, RenderContext
from llm4trx.render.formats import get_format
from llm4trx.render.client_texts import (
    PERCENTILES,
    SPECIAL_TOKENS,
    TEXT_COLUMNS,
    TextStats,
    build_texts,  # noqa: F401
    estimate_line_cap,
    estimate_ratio,
    render_chunk,
    token_stats,  # noqa: F401 (re-exported)
)
from llm4trx.render.tokencount import get_counter

log = logging.getLogger(__name__)


def print_table(stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"text: format {stats['format']}, tokens of {stats['count_tokenizer']} (max_tokens {stats['max_tokens']})"
    )
    for col in ["split", "clients", "truncated", *[f"p{p}" for p in PERCENTILES], "max", "tok/trx", "line tok/trx"]:
        table.add_column(col, justify="right")
    for split, s in stats["splits"].items():
        t = s["tokens"]
        table.add_row(
            split,
            str(s["n_clients"]),
            str(s["n_truncated_clients"]),
            *[f"{t[f'p{p}']:.0f}" for p in PERCENTILES],
            str(t["max"]),
            f"{s['tokens_per_transaction']:.2f}",
            f"{s['line_tokens_per_transaction']:.2f}",
        )
    Console(width=max(100, Console().width)).print(table)


EVENT_COLUMNS = ["client_id", "event_time", "amount", "mcc"]
CHUNK_EVENTS = 1_000_000  # text.chunk_events when unset


def client_splits(data_dir: Path) -> pd.DataFrame:
    """client_id (as strings) and split of every client."""
    splits = read_splits(data_dir, ("client_id", "split"))
    return splits.assign(client_id=splits["client_id"].astype(str))


def scan_events(
    events_path: Path,
    splits_path: Path,
    splits: pd.DataFrame,
    ds: DatasetSpec,
    text: TextSpec,
    batch_rows: int = BATCH_ROWS,
) -> tuple[list[Path], RenderContext]:
    """Pass 1 over events.parquet in batches: the contract checks of the whole-table reader (same errors, in
    the same order) and the dataset's RenderContext. Returns (parquet files in order, context)."""
    categorical = list(ds.categorical or [])
    files = event_files(events_path)
    if check_event_columns(files, [*EVENT_COLUMNS, *categorical]) == 0:
        raise DataError(events_path, "no events")
    known = pa.array(splits["client_id"].to_numpy(object), pa.string())
    acc = ContextAccumulator(ds, text)
    unknown = None
    prev_client, prev_time = None, None
    for table in iter_batches(files, ["client_id", "event_time", *categorical], batch_rows):
        client = table.column("client_id")
        when = table.column("event_time")
        times = pc.cast(pc.cast(when, pa.timestamp("ns", getattr(when.type, "tz", None))), pa.int64()).to_numpy()
        if prev_client is not None:  # the seam with the previous batch
            client = pa.concat_arrays([pa.array([prev_client], pa.string()), client.combine_chunks()])
            times = np.r_[prev_time, times]
        else:
            client = client.combine_chunks()
        if len(client) > 1:
            later, earlier = client.slice(1), client.slice(0, len(client) - 1)
            same = pc.equal(later, earlier).to_numpy(zero_copy_only=False)
            if pc.any(pc.less(later, earlier)).as_py() or (np.diff(times)[same] < 0).any():
                raise DataError(
                    events_path, "not sorted by client_id, event_time (the prepare contract)", column="client_id"
                )
        if unknown is None:
            missing = np.flatnonzero(~pc.is_in(client, value_set=known).to_numpy(zero_copy_only=False))
            if len(missing):
                unknown = client[int(missing[0])].as_py()
        prev_client, prev_time = client[-1].as_py(), times[-1]
        acc.update(
            table.select(["event_time", *categorical]).to_pandas(
                types_mapper={pa.string(): pd.ArrowDtype(pa.string())}.get
            )
        )
    if unknown is not None:
        raise DataError(splits_path, f"client {unknown!r} of {events_path.name} has no split", column="client_id")
    bad = ~splits["split"].isin(SPLITS)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(splits_path, f"unknown split {splits['split'].iloc[row]!r}", column="split", row=row + 2)
    return files, acc.result()


def run(cfg: DictConfig) -> Path:
    fmt = get_format(cfg.text.format)  # ConfigError (listing known formats) before anything is read
    max_tokens = cfg.text.get("max_tokens")  # > SPECIAL_TOKENS or null, and chunk_events >= 1: core/schema.py
    chunk_events = int(cfg.text.get("chunk_events") or CHUNK_EVENTS)
    spark = engine_of(cfg) == "spark"
    if spark and mixing(cfg):
        raise ConfigError(
            "engine=spark does not mix augmented texts (augment.mix); use engine=embedded for this text stage"
        )
    data_dir = require(cfg, "prepare")

    def build(out: Path) -> dict:
        categorical = list(cfg.dataset.get("categorical") or [])
        splits = client_splits(data_dir)
        files, ctx = scan_events(
            events_path(data_dir),
            splits_path(data_dir),
            splits,
            DatasetSpec.from_config(cfg.dataset),
            TextSpec.from_config(cfg.text),
        )
        counter = get_counter(str(cfg.text.count_tokenizer))
        # max_tokens is the whole sample's budget: bos + text + eos, as the shards and the model see it
        body = None if max_tokens is None else int(max_tokens) - SPECIAL_TOKENS
        lookup = splits.drop_duplicates("client_id").set_index("client_id")["split"]
        per_split = {split: TextStats() for split in SPLITS}
        held = [] if mixing(cfg) else None  # train rows kept for augment.mix (texts are within budget)
        chunks = iter_client_chunks(files, [*EVENT_COLUMNS, *categorical], chunk_events)

        def window(events: pd.DataFrame) -> tuple[float | None, int | None]:
            """The counting window's bytes/token ratio and line cap, sized once on the first chunk."""
            if body is None:
                return None, None
            ratio = estimate_ratio(events, fmt, ctx, counter)
            return ratio, estimate_line_cap(events, fmt, ctx, counter, body, ratio)

        if spark:  # the same render_chunk, context and window on Spark tasks (llm4trx.render.spark_text)
            from llm4trx.render import spark_text

            first = next(chunks, None)
            ratio, line_cap = window(to_frame(first)) if first is not None else (None, None)
            del first
            per_split = spark_text.render(
                session(cfg),
                files,
                categorical,
                fmt,
                ctx,
                str(cfg.text.count_tokenizer),
                body,
                lookup,
                ratio,
                line_cap,
                chunk_events,
                out,
                cfg.engine.spark.get("partitions"),
            )
        else:
            sized = None
            for table in tqdm(chunks, desc=f"text[{fmt.name}]", disable=not cfg.get("progress", False), leave=False):
                events = to_frame(table)
                del table
                if sized is None:
                    sized = window(events)
                frame = render_chunk(events, fmt, ctx, counter, body, lookup, *sized)
                del events
                for split in SPLITS:
                    part = frame[frame["split"] == split]
                    per_split[split].add(part)
                    if split == "train" and held is not None:
                        held.append(part[TEXT_COLUMNS])
                    elif len(part):
                        write_rows(part[TEXT_COLUMNS], text_path(out, split))
        stats = {
            "format": fmt.name,
            "max_tokens": max_tokens,
            "count_tokenizer": str(cfg.text.count_tokenizer),
            "render_context": {
                "categorical": ctx.categorical,
                "mcc_names": ctx.mcc_names,
                "time_of_day": ctx.time_of_day,
                "usual": ctx.usual,
            },
            "splits": {},
            "augmented": None,
        }
        train = pd.concat(held, ignore_index=True) if held else pd.DataFrame(columns=TEXT_COLUMNS)
        augmented = None
        if mixing(cfg):
            folder = require(cfg, "augment")
            augmented = (folder, read_success(folder).get("outputs", {}))
        train_ids = set(splits.loc[splits["split"] == "train", "client_id"])
        mix = MixSpec.from_config(cfg.augment.mix) if mixing(cfg) else None
        rows, stats["augmented"] = mix_into_train(mix, train, train_ids, augmented, counter.count)
        if held is not None and len(rows):  # augmented texts of train clients, by augment.mix (never val/test)
            write_rows(rows, text_path(out, "train"))
        for split in SPLITS:
            if not text_path(out, split).exists():  # no client in this split: what pandas writes for none
                write_rows(pd.DataFrame({c: pd.Series(dtype=object) for c in TEXT_COLUMNS}), text_path(out, split))
            stats["splits"][split] = per_split[split].result()
        write_stats(out, stats)
        print_table(stats)
        return {s: v["n_clients"] for s, v in stats["splits"].items()}

    return run_stage(cfg, "text", build)


def write_rows(rows: pd.DataFrame, path: Path) -> None:
    """Append rows to a jsonl file, exactly as one to_json call over all of them writes them."""
    rows.to_json(path, orient="records", lines=True, force_ascii=False, mode="a")


def summary_line(c: dict, seconds: float, folder: Path) -> str:
    return "client texts: " + ", ".join(f"{k} {v:,}" for k, v in c.items() if isinstance(v, int))


main = stage_main(run, summary_line)


if __name__ == "__main__":
    main()
