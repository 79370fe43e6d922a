"""Pooling ablation: which hidden states make the best client embedding, judged on VALIDATION scores only.

One forward pass per client over a finished run's exported LM (hf/) gives every layer's hidden states; each
variant pools them (mean over tokens or the last token; one layer, or a slice of layers averaged; with or
without a short task-neutral prefix between bos and the text) and goes through the validation protocol's
folds (LightGBM, the same parameters as validate). The table shows the out-of-fold val score used to choose
and, for information only, the test score. The reference in the same run is the previous default
(mean over the last layer, no prefix).

    PYTHONPATH=source .venv/bin/python bench/pooling_ablation.py experiment=smoke seed=12 [--prefix "..."]
        [--segments 2 4 8] [--segment-layers 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--prefix",
        default="transactions of one client :",
        help="task-neutral prefix (words a domain tokenizer does not know become unk)",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--segments", type=int, nargs="*", default=[2, 4, 8], help="segment-mean variants to add")
    ap.add_argument(
        "--segment-layers",
        type=int,
        nargs="*",
        default=None,
        help="layers pooled by segments (0: the embedding output; default: the last layer only)",
    )
    ap.add_argument(
        "--max",
        action="store_true",
        help="add max-pooling variants (embed.pooling=max; last layer; one part and --segments)",
    )
    ap.add_argument("--only-new", action="store_true", help="skip the layer/last/prefix variants (mean reference kept)")
    args, overrides = ap.parse_known_args()
    from llm4trx.core.config import compose
    from llm4trx.core.stage import require
    from llm4trx.embed import length_sorted_batches, load_model, read_texts, tokenize
    from llm4trx.evaluation.protocol import cross_validate, load_labels
    from llm4trx.lm.pooling import pool
    from llm4trx.core.sections import ValidationSpec
    from llm4trx.evaluation.validation import downstream_head, validation_jobs

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose(overrides)
    texts = read_texts(require(cfg, "text"))
    tokenizer, model = load_model(require(cfg, "export"), torch.float32, torch.device("cpu"))
    n_layers = model.config.num_hidden_layers
    slices = {f"layer {i}" if i else "embedding output": [i, i + 1] for i in range(n_layers + 1)}
    slices[f"all {n_layers + 1} (mean)"] = [0, None]
    variants = [(f"{p} pooling, {s}", p, sl, "", 1) for s, sl in slices.items() for p in ("mean", "last")]
    variants += [(f"mean pooling, layer {n_layers}, prefix", "mean", [n_layers, n_layers + 1], args.prefix, 1)]
    # Means over contiguous parts of the history, concatenated: keeps where in the history a pattern sits.
    segment_layers = [n_layers] if args.segment_layers is None else args.segment_layers
    if any(not 0 <= layer <= n_layers for layer in segment_layers):
        raise SystemExit(f"--segment-layers: the model has layers 0 (embedding output) to {n_layers}")
    variants += [
        (
            f"mean over {k} segments, {'embedding output' if layer == 0 else f'layer {layer}'}",
            "mean",
            [layer, layer + 1],
            "",
            k,
        )
        for layer in segment_layers
        for k in args.segments
    ]
    if args.only_new:
        keep = {f"mean pooling, layer {n_layers}"}
        variants = [v for v in variants if v[0] in keep or "segments" in v[0]]
    if args.max:
        last = [n_layers, n_layers + 1]
        variants += [(f"max over {k} segments, layer {n_layers}", "max", last, "", k) for k in [1, *args.segments]]
    started = time.time()
    pooled = {}
    for prefix in sorted({v[3] for v in variants}):
        seqs, _ = tokenize(
            tokenizer, texts["text"].tolist(), model.config.max_position_embeddings + len(prefix.split()), prefix
        )
        batches = length_sorted_batches([len(s) for s in seqs], 32)
        width = model.config.hidden_size
        out = {v[0]: np.zeros((len(seqs), width * v[4]), np.float32) for v in variants if v[3] == prefix}
        with torch.no_grad():
            for batch in batches:
                longest = max(len(seqs[i]) for i in batch)
                ids = torch.full((len(batch), longest), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, i in enumerate(batch):
                    ids[r, : len(seqs[i])], mask[r, : len(seqs[i])] = torch.tensor(seqs[i]), 1
                hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
                for name, p, sl, pre, k in variants:
                    if pre == prefix:
                        out[name][batch] = pool(hs, mask, p, sl, segments=k).numpy()
        pooled.update(out)
    forward_s = time.time() - started
    labels = load_labels(require(cfg, "prepare"), int(cfg.splits.n_folds))
    head = downstream_head(ValidationSpec.from_config(cfg))
    ids = texts["client_id"].to_numpy()
    rows = []
    for name, *_ in variants:
        frame = pd.DataFrame(pooled[name], index=pd.Index(ids, name="client_id"))
        r = cross_validate(
            name,
            frame,
            labels,
            list(cfg.dataset.metrics),
            head,
            validation_jobs(ValidationSpec.from_config(cfg)),
            "ablation",
        )
        head = r[cfg.dataset.metrics[0]]
        rows.append((name, head["val_mean"], head["val_std"], head["test_mean"]))
        print(
            f"{name:45s} val {head['val_mean']:.4f} ± {head['val_std']:.4f}   test {head['test_mean']:.4f}", flush=True
        )
    ref = dict((r[0], r[1]) for r in rows)["mean pooling, " + f"layer {n_layers}"]
    best = max(rows, key=lambda r: r[1])
    print(
        f"\nseed {cfg.seed}, load {os.getloadavg()[0]:.2f}, forward {forward_s:.0f} s; "
        f"metric {cfg.dataset.metrics[0]}; reference (mean, last layer) val {ref:.4f}"
    )
    print("| variant | val (mean ± fold std) | val − reference | test (information only) |\n|---|---|---|---|")
    for name, v, vs, t in rows:
        print(f"| {'**' + name + '**' if name == best[0] else name} | {v:.4f} ± {vs:.4f} | {v - ref:+.4f} | {t:.4f} |")


if __name__ == "__main__":
    sys.exit(main())
