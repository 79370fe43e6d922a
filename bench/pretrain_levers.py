"""CPU pretraining throughput levers for the default (smoke) model, measured in one run.

Trains the `model=tiny` Llama (the smoke preset's widths) on client-length token sequences drawn from the
default run's length distribution (text=fields on synthetic rosbank: p50 ~530, p95 ~950 tokens), a few
optimizer steps per variant, and prints real (non-padding) tokens per second of each variant and its ratio to
the reference measured in the same run (fp32, batches of random clients padded to their longest, all
threads). Levers: length-bucketed batches (clients of similar length together, less padding), bf16 autocast
(this CPU has avx512_bf16 when lscpu says so), threads, torch.compile.

    PYTHONPATH=source .venv/bin/python bench/pretrain_levers.py [--steps 6] [--batch 16] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np
import torch


def lengths_like_default(n: int, rng) -> np.ndarray:
    # 20..200 transactions per client (the synthetic default) x 4.73 field tokens per transaction + bos/eos
    return np.minimum((rng.integers(20, 201, n) * 4.73).astype(int) + 2, 1024)


def make_model(hidden: int, layers: int, vocab: int = 300):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        attn_implementation="sdpa",
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def batches(lengths: np.ndarray, batch: int, bucketed: bool, rng) -> list[np.ndarray]:
    order = rng.permutation(len(lengths))
    if bucketed:  # sort within windows of 8 batches by length, then shuffle the batches (llm-foundry-free)
        window = 8 * batch
        order = np.concatenate([w[np.argsort(lengths[w])] for w in np.array_split(order, max(1, len(order) // window))])
    groups = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
    return [groups[i] for i in rng.permutation(len(groups))]


def run_variant(name, model, lengths, batch, steps, bucketed, bf16, threads, rng) -> float:
    torch.set_num_threads(threads)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    groups = batches(lengths, batch, bucketed, rng)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    real, elapsed = 0, 0.0
    for step, idx in enumerate(groups[: steps + 1]):
        longest = int(lengths[idx].max())
        mask = torch.zeros(len(idx), longest, dtype=torch.long)
        for r, n in enumerate(lengths[idx]):
            mask[r, :n] = 1
        ids = torch.randint(4, 300, (len(idx), longest)) * mask
        labels = ids.masked_fill(mask == 0, -100)
        start = time.perf_counter()
        with ctx():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:  # the first step warms up (allocations, compile)
            elapsed += time.perf_counter() - start
            real += int(mask.sum())
    tps = real / elapsed
    print(
        f"{name:38s} {tps:10.0f} real tokens/s  (padding {1 - real / sum(len(idx) * lengths[idx].max() for idx in groups[1 : steps + 1]):.0%})",
        flush=True,
    )
    return tps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lengths = lengths_like_default(4000, rng)
    cores = len(os.sched_getaffinity(0))
    print(
        f"tiny Llama {args.hidden}x{args.layers}, batch {args.batch}, {args.steps} timed steps, {cores} cores, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    variants = [
        ("reference: fp32, random batches", False, False, cores),
        ("bucketed batches", True, False, cores),
        ("bf16 autocast", False, True, cores),
        ("bucketed + bf16 autocast", True, True, cores),
        ("bucketed, 1 thread", True, False, 1),
    ]
    results = {}
    for name, bucketed, bf16, threads in variants:
        model = make_model(args.hidden, args.layers)
        results[name] = run_variant(
            name, model, lengths, args.batch, args.steps, bucketed, bf16, threads, np.random.default_rng(1)
        )
    if args.compile:
        model = torch.compile(make_model(args.hidden, args.layers))
        results["bucketed + torch.compile"] = run_variant(
            "bucketed + torch.compile",
            model,
            lengths,
            args.batch,
            args.steps,
            True,
            False,
            cores,
            np.random.default_rng(1),
        )
    ref = results[variants[0][0]]
    print("\nratio to the reference (same run):")
    for name, tps in results.items():
        print(f"  {name:38s} {tps / ref:5.2f}x")


if __name__ == "__main__":
    main()
