"""Length-sorted dynamic batches vs unsorted batches padded to the longest text, same tiny model.

Texts with skewed lengths (most short, a few long, as transaction histories are). Prints both throughputs
(clients/s and real tokens/s) and their ratio; goal >= 2x.
  PYTHONPATH=source .venv/bin/python bench/embed_batching.py [--clients 384 --batch-size 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaModel

from llm4trx.embed import embed_sequences, length_sorted_batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=1024)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=args.max_tokens,
    )
    model = LlamaModel(config).eval()
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(4.5, 0.9, args.clients), 8, args.max_tokens).astype(int)
    sequences = [rng.integers(3, config.vocab_size, n).tolist() for n in lengths]
    n_tokens = int(lengths.sum())
    print(f"{args.clients} texts, tokens: median {int(np.median(lengths))}, max {lengths.max()}, total {n_tokens}")

    def measure(batches, pad_to=None) -> float:
        started = time.perf_counter()
        embed_sequences(
            model,
            0,
            sequences,
            batches,
            "mean",
            [-1, None],
            "right",
            torch.device("cpu"),
            progress=False,
            pad_to=pad_to,
        )
        return time.perf_counter() - started

    in_order = [list(range(i, min(i + args.batch_size, args.clients))) for i in range(0, args.clients, args.batch_size)]
    sorted_batches = length_sorted_batches(lengths.tolist(), args.batch_size)
    measure(sorted_batches[-2:])  # warm-up
    t_sorted = measure(sorted_batches)
    t_padded = measure(in_order, pad_to=int(lengths.max()))
    # Padded share of the positions computed (what embed's _SUCCESS.json reports as padded_share).
    share_sorted = 1 - n_tokens / sum(len(b) * int(lengths[b].max()) for b in sorted_batches)
    share_padded = 1 - n_tokens / (args.clients * int(lengths.max()))
    for name, seconds, share in (
        ("length-sorted, dynamic padding", t_sorted, share_sorted),
        ("unsorted, padded to the longest", t_padded, share_padded),
    ):
        print(
            f"{name:34s} {seconds:7.2f} s  {args.clients / seconds:8.1f} clients/s  {n_tokens / seconds:9.0f} "
            f"real tokens/s  padded share {share:.1%}"
        )
    print(f"speed-up (sorted+dynamic vs unsorted+padded): {t_padded / t_sorted:.2f}x  (goal >= 2x)")


if __name__ == "__main__":
    main()
