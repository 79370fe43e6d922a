"""Stage `shards`: text/{train,val}.jsonl -> mds/{train,val}/ (mosaicml-streaming MDS, zstd).

One sample per client: `tokens` (ndarray:int32, bos + text + eos, pre-tokenized with tokenizer/) and
`client_id` (str) -- what llm-foundry's StreamingTextDataset reads. Samples longer than `max_seq_len`
are truncated keeping the END of the text (the most recent events) and counted. Test clients never
appear: only train.jsonl and val.jsonl are read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from llm4trx.core.cli import stage_main
from llm4trx.core.errors import ConfigError, DataError
from llm4trx.lm.tokenizers import load_tokenizer
from llm4trx.data.splits import PRETRAIN_SPLITS
from llm4trx.core.stage import require, run_stage

log = logging.getLogger(__name__)

COLUMNS = {"tokens": "ndarray:int32", "client_id": "str"}
BATCH = 512


def read_jsonl(path: Path, batch: int = BATCH):
    """Batches of (client_ids, texts); a line that is not a JSON object with both raises DataError."""
    ids, texts = [], []
    with open(path, encoding="utf-8") as f:
        for row, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
                if record.get("pretrain", True) is False:  # kept for embedding only (augment mix, with_base: false)
                    continue
                ids.append(str(record["client_id"]))
                texts.append(record["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(path, f"not a text record ({err})", row=row) from err
            if len(texts) == batch:
                yield ids, texts
                ids, texts = [], []
    if texts:
        yield ids, texts


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
            ids, cut = ids[len(ids) - body:], cut + 1
        sample = np.empty(len(ids) + 2, np.int32)
        sample[0], sample[1:-1], sample[-1] = bos, ids, eos
        samples.append(sample)
    return samples, cut


def write_split(src: Path, dst: Path, tokenizer, max_seq_len: int, progress: bool) -> dict:
    from streaming import MDSWriter

    stats = {"samples": 0, "tokens": 0, "truncated": 0}
    with MDSWriter(out=str(dst), columns=COLUMNS, compression="zstd", progress_bar=False) as writer:
        for ids, texts in tqdm(read_jsonl(src), desc=f"shards[{src.stem}]", disable=not progress, leave=False):
            samples, cut = encode_samples(tokenizer, texts, max_seq_len)
            for client_id, tokens in zip(ids, samples):
                writer.write({"tokens": tokens, "client_id": client_id})
                stats["tokens"] += len(tokens)
            stats["samples"] += len(samples)
            stats["truncated"] += cut
    return stats


def run(cfg: DictConfig) -> Path:
    max_seq_len = int(cfg.max_seq_len)
    if max_seq_len < 3:
        raise ConfigError(f"max_seq_len must be at least 3 (bos + a token + eos), got {max_seq_len}")
    text_dir, tok_dir = require(cfg, "text"), require(cfg, "tokenizer")

    def build(out: Path) -> dict:
        tokenizer = load_tokenizer(tok_dir, need=("bos_token", "eos_token"))
        stats = {}
        for split in PRETRAIN_SPLITS:
            stats[split] = write_split(text_dir / f"{split}.jsonl", out / split, tokenizer, max_seq_len,
                                       bool(cfg.get("progress")))
            if stats[split]["truncated"]:
                log.warning("shards[%s]: %d of %d samples longer than max_seq_len=%d, cut at the start",
                            split, stats[split]["truncated"], stats[split]["samples"], max_seq_len)
        if stats["train"]["samples"] == 0:
            raise DataError(text_dir / "train.jsonl", "no training texts")
        (out / "stats.json").write_text(json.dumps({"max_seq_len": max_seq_len, **stats}, indent=2) + "\n")
        return stats

    return run_stage(cfg, "shards", build)


main = stage_main(run)

if __name__ == "__main__":
    main()
