"""Tokens per transaction of every text format: Qwen2's BPE, the domain BPE, and the `fields` WordLevel.

Synthetic data in the rosbank schema (the default dataset; --schema for the others), untruncated texts of
--clients clients. Domain tokenizers are trained on the rendered texts of the same clients (the tokenizer
stage trains on train.jsonl): a byte-level BPE (4096) on `flat`, and the `fields` WordLevel tokenizer on
`fields` (where each whitespace-separated word is one id). The ratio column compares every format with
`flat` under Qwen's tokenizer, measured in the same run.

    PYTHONPATH=source .venv/bin/python bench/tokens_per_transaction.py [--clients 600] [--schema rosbank]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import pandas as pd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=600)
    ap.add_argument("--schema", default="rosbank")
    args = ap.parse_args()
    from llm4trx import prepare
    from llm4trx.core.config import compose
    from llm4trx.core.sections import DatasetSpec, TextSpec
    from llm4trx.core.stage import stage_dir
    from llm4trx.render.columns import RenderContext
    from llm4trx.render.formats import FORMATS, render
    from llm4trx.render.tokencount import get_counter
    from llm4trx.tokenizer import train_domain_tokenizer

    out = tempfile.mkdtemp(prefix="llm4trx-tpt-")
    cfg = compose(
        [
            f"paths.output_root={out}",
            "progress=false",
            f"dataset.n_clients={args.clients}",
            f"dataset.schema={args.schema}",
        ]
    )
    prepare.run(cfg)
    events = pd.read_parquet(stage_dir(cfg, "prepare") / "events.parquet")
    events["client_id"] = events["client_id"].astype(str)
    ctx = RenderContext.from_events(events, DatasetSpec.from_config(cfg.dataset), TextSpec.from_config(cfg.text))
    texts = {name: render(events, name, ctx).tolist() for name in FORMATS}
    special = dict(bos_token="<|bos|>", eos_token="<|endoftext|>", pad_token="<|pad|>", unk_token="<|unk|>")
    bpe = train_domain_tokenizer("domain_bpe", iter(texts["flat"]), 4096, 2, special)
    words = train_domain_tokenizer("fields", iter(texts["fields"]), 4096, 2, special)
    qwen = get_counter("qwen")
    n = len(events)

    def count(tok, t):
        return sum(len(e.ids) for e in tok.backend_tokenizer.encode_batch(t, add_special_tokens=False))

    print(
        f"{args.schema} schema, {n:,} transactions of {args.clients} clients, untruncated; load "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        "| format | Qwen2 BPE tok/trx | vs flat (Qwen) | domain BPE (4096, on flat) | fields WordLevel |\n|---|---|---|---|---|"
    )
    flat = qwen.count(texts["flat"]).sum() / n
    for name, t in texts.items():
        q = qwen.count(t).sum() / n
        wl = f"{count(words, t) / n:.2f} (vocab {len(words)})" if name == "fields" else "–"
        print(f"| {name} | {q:.2f} | {q / flat:.2f}× | {count(bpe, t) / n:.2f} | {wl} |")


if __name__ == "__main__":
    main()
