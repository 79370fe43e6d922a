"""Stage `shards`: text/{train,val}.jsonl -> mds/{train,val}/ (mosaicml-streaming MDS, zstd).

One sample per client: `tokens` (ndarray:int32, bos + text + eos, pre-tokenized with tokenizer/) and
`client_id` (str) -- what llm-foundry's StreamingTextDataset reads. Samples longer than `max_seq_len`
are truncated keeping the END of the text (the most recent events) and counted. Test clients never
appear: only train.jsonl and val.jsonl are read.

Parallel and in bounded memory: each split's jsonl is cut into line-aligned byte ranges of
`shards.samples_per_part` lines (hashed: it fixes the layout), each range is tokenized and written by its own
MDSWriter into mds/{split}/part-NNNNN/ (`shards.workers` processes, operational), and the parts' indexes are
merged in order by mosaicml-streaming's own `merge_index` into mds/{split}/index.json. The samples, their
order and the shard files do not depend on the number of workers; read back, the split holds the same
samples in the same order as one MDSWriter over the whole file (`write_split`).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from llm4trx.core import registry
from llm4trx.core.cli import stage_main
from llm4trx.core.errors import DataError
from llm4trx.lm.tokenizers import load_tokenizer
from llm4trx.data.splits import PRETRAIN_SPLITS
from llm4trx.data.text_files import text_path
from llm4trx.core.stage import require, run_stage

log = logging.getLogger(__name__)

# What core/stage_runner.py imports before forking this stage, so that later stages inherit it.
PRELOAD = ("streaming",)

COLUMNS = {"tokens": "ndarray:int32", "client_id": "str"}
BATCH = 512


def _records(path: Path, lines, first_row: int = 1):
    """(client_id, text) of the records among `lines` (numbered from first_row) that go into pretraining."""
    for row, line in enumerate(lines, start=first_row):
        try:
            record = json.loads(line)
            if record.get("pretrain", True) is False:  # kept for embedding only (augment mix, with_base: false)
                continue
            yield str(record["client_id"]), record["text"]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise DataError(path, f"not a text record ({err})", row=row) from err


def _batched(records, batch: int):
    ids, texts = [], []
    for client_id, text in records:
        ids.append(client_id)
        texts.append(text)
        if len(texts) == batch:
            yield ids, texts
            ids, texts = [], []
    if texts:
        yield ids, texts


def read_jsonl(path: Path, batch: int = BATCH):
    """Batches of (client_ids, texts); a line that is not a JSON object with both raises DataError."""
    with open(path, encoding="utf-8") as f:
        yield from _batched(_records(path, f), batch)


def read_range(path: Path, start: int, end: int, first_row: int, batch: int = BATCH):
    """read_jsonl over the lines in bytes [start, end) of `path` (line-aligned), rows numbered from first_row."""
    with open(path, "rb") as f:
        f.seek(start)
        lines = (line.decode("utf-8") for line in _limited(f, end - start))
        yield from _batched(_records(path, lines, first_row), batch)


def _limited(f, size: int):
    while size > 0:
        line = f.readline(size)
        if not line:
            return
        size -= len(line)
        yield line


def line_ranges(path: Path, lines_per_part: int, block: int = 1 << 24) -> list[tuple[int, int, int]]:
    """(start byte, end byte, first row) of consecutive parts of `lines_per_part` lines (the last may be
    shorter) covering the file; [(0, 0, 1)] for an empty file, so every split has at least one part."""
    cuts, row, pos = [0], 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + pos + 1  # byte after each newline
            take = np.arange(lines_per_part - row % lines_per_part - 1, len(ends), lines_per_part)
            cuts += ends[take].tolist()
            row += len(ends)
            pos += len(chunk)
    if cuts[-1] != pos:  # lines after the last full part (or a last line without a newline)
        cuts.append(pos)
    if len(cuts) == 1:
        return [(0, 0, 1)]
    return [(a, b, 1 + i * lines_per_part) for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


def encode_samples(tokenizer, texts: list[str], max_seq_len: int) -> tuple[list[np.ndarray], int]:
    """bos + text + eos per text (int32), cutting the START of texts too long; returns (samples, n_cut)."""
    body = max_seq_len - 2
    # encode_batch_fast: the same ids without character offsets, which cost ~20% of the encoding
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    samples, cut = [], 0
    for enc in encodings:
        ids = enc.ids
        if len(ids) > body:
            ids, cut = ids[len(ids) - body :], cut + 1
        sample = np.empty(len(ids) + 2, np.int32)
        sample[0], sample[1:-1], sample[-1] = bos, ids, eos
        samples.append(sample)
    return samples, cut


def _write(dst: Path, batches, tokenizer, max_seq_len: int, progress: bool = False, desc: str = "") -> dict:
    from streaming import MDSWriter

    stats = {"samples": 0, "tokens": 0, "truncated": 0}
    with MDSWriter(out=str(dst), columns=COLUMNS, compression="zstd", progress_bar=False) as writer:
        for ids, texts in tqdm(batches, desc=desc, disable=not progress, leave=False):
            samples, cut = encode_samples(tokenizer, texts, max_seq_len)
            for client_id, tokens in zip(ids, samples):
                writer.write({"tokens": tokens, "client_id": client_id})
                stats["tokens"] += len(tokens)
            stats["samples"] += len(samples)
            stats["truncated"] += cut
    return stats


def write_split(src: Path, dst: Path, tokenizer, max_seq_len: int, progress: bool) -> dict:
    """One MDSWriter over the whole of `src` (a jsonl of text records) into `dst`."""
    return _write(dst, read_jsonl(src), tokenizer, max_seq_len, progress, f"shards[{src.stem}]")


def part_name(index: int) -> str:
    return f"part-{index:05d}"


_TOKENIZERS: dict[str, object] = {}


def write_part(src: Path, start: int, end: int, first_row: int, dst: Path, tokenizer, max_seq_len: int) -> dict:
    """The records in bytes [start, end) of `src` into an MDS dataset at `dst` (a part of a split).
    `tokenizer`: a loaded tokenizer, or the path of a tokenizer directory (loaded once per process)."""
    if isinstance(tokenizer, (str, Path)):
        key = str(tokenizer)
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = load_tokenizer(Path(key), need=("bos_token", "eos_token"))
        tokenizer = _TOKENIZERS[key]
    return _write(dst, read_range(src, start, end, first_row), tokenizer, max_seq_len)


def _write_part_in_worker(*args) -> dict:
    """write_part in a worker process; a DataError comes back as its fields (the exception does not pickle)."""
    try:
        return write_part(*args)
    except DataError as err:
        return {"error": (err.path, err.message, err.column, err.row)}


def _single_threaded() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def merge_parts(dst: Path, n_parts: int) -> None:
    """mds/{split}/index.json over its parts, in part order (mosaicml-streaming's merge_index)."""
    from streaming.base.util import merge_index

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # merge_index warns about its temporary folder and the existing `dst`
    try:
        merge_index([str(dst / part_name(i) / "index.json") for i in range(n_parts)], str(dst), keep_local=True)
    finally:
        logging.disable(previous)


def write_split_parallel(
    src: Path,
    dst: Path,
    tok_dir: Path,
    max_seq_len: int,
    samples_per_part: int,
    workers: int,
    tokenizer=None,
    progress: bool = False,
) -> dict:
    """`src` -> dst/part-NNNNN/ (samples_per_part lines each, encoded by `workers` processes) + the merged
    dst/index.json. With workers <= 1 the parts are written in this process (with `tokenizer` if given)."""
    ranges = line_ranges(src, samples_per_part)
    dst.mkdir(parents=True, exist_ok=True)
    jobs = [(src, a, b, row, dst / part_name(i)) for i, (a, b, row) in enumerate(ranges)]
    workers = min(workers, len(jobs))
    if workers <= 1:
        tok = tokenizer if tokenizer is not None else tok_dir
        results = [
            write_part(*job, tok, max_seq_len)
            for job in tqdm(jobs, desc=f"shards[{src.stem}]", disable=not progress, leave=False)
        ]
    else:
        # fork: the workers inherit the loaded tokenizer and the imported streaming (~8 CPU-s of imports per
        # spawned process); each encodes single-threaded (TOKENIZERS_PARALLELISM=false: the tokenizers
        # library's own guard against its thread pool in a forked child).
        if tokenizer is not None:
            _TOKENIZERS[str(tok_dir)] = tokenizer
        import streaming  # noqa: F401  (imported once, before the fork)

        with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_single_threaded) as pool:
            futures = [pool.submit(_write_part_in_worker, *job, str(tok_dir), max_seq_len) for job in jobs]
            results = [f.result() for f in tqdm(futures, desc=f"shards[{src.stem}]", disable=not progress, leave=False)]
        for result in results:  # the first part (in file order) with bad input reports, as in one process
            if "error" in result:
                raise DataError(*result["error"])
    merge_parts(dst, len(jobs))
    stats = {key: sum(r[key] for r in results) for key in ("samples", "tokens", "truncated")}
    return {**stats, "parts": len(jobs)}


def n_workers(value) -> int:
    """shards.workers: a count, or 0/null for every CPU this process may use."""
    if value is None or int(value) <= 0:
        return len(os.sched_getaffinity(0))
    return int(value)


def run(cfg: DictConfig) -> Path:
    max_seq_len = int(cfg.max_seq_len)  # >= 3 and shards.samples_per_part >= 1: core/schema.py
    text_dir, tok_dir = require(cfg, "text"), require(cfg, "tokenizer")

    sc = cfg.get("shards") or {}
    samples_per_part = int(sc["samples_per_part"])
    workers = n_workers(sc.get("workers"))

    def build(out: Path) -> dict:
        tokenizer = load_tokenizer(tok_dir, need=("bos_token", "eos_token"))  # validated before any part
        stats = {}
        for split in PRETRAIN_SPLITS:
            stats[split] = write_split_parallel(
                text_path(text_dir, split),
                out / split,
                tok_dir,
                max_seq_len,
                samples_per_part,
                workers,
                tokenizer,
                bool(cfg.get("progress")),
            )
            if stats[split]["truncated"]:
                log.warning(
                    "shards[%s]: %d of %d samples longer than max_seq_len=%d, cut at the start",
                    split,
                    stats[split]["truncated"],
                    stats[split]["samples"],
                    max_seq_len,
                )
        if stats["train"]["samples"] == 0:
            raise DataError(text_path(text_dir, "train"), "no training texts")
        (out / registry.file("shards", "stats")).write_text(
            json.dumps({"max_seq_len": max_seq_len, **stats}, indent=2) + "\n"
        )
        return stats

    return run_stage(cfg, "shards", build)


def summary_line(c: dict, seconds: float, folder: Path) -> str:
    return ", ".join(
        f"{s} {v['samples']:,} samples / {v['tokens']:,} tokens"
        for s, v in c.items()
        if isinstance(v, dict) and "samples" in v
    )


main = stage_main(run, summary_line)

if __name__ == "__main__":
    main()
