"""CoLES's hard-negative pair selection: FastHardNegativePairSelector (one matrix product) against ptls's
HardNegativePairSelector (outer_pairwise_distance), in a whole training step and alone.

A step is the coles stage's own: a batch of `--clients` clients x 5 SampleSlices of `--len` transactions on the
rosbank schema through the smoke preset's encoder (TrxEncoder with its time inputs + GRU), the normalised head, ContrastiveLoss and
its backward pass. Both selectors see the same batches; the pairs and the loss are checked equal first. Prints
ms per step and per selection for each, and the ratio ptls / fast (the figure), measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/coles_pair_selector.py --hidden 64 --clients 64
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--len", type=int, default=40, help="transactions per slice")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    from ptls.data_load.utils import collate_feature_dict
    from ptls.frames.coles.losses import ContrastiveLoss
    from ptls.frames.coles.sampling_strategies import HardNegativePairSelector

    from llm4trx.core.config import compose
    from llm4trx.core.sections import ColesSpec
    from llm4trx.evaluation.coles_model import FastHardNegativePairSelector, build_module, build_seq_encoder

    torch.manual_seed(0)
    c = ColesSpec.from_config(compose(["experiment=smoke", f"coles.hidden_size={args.hidden}"]).coles)
    sizes = {"mcc": 60, "channel_type": 7, "currency": 4, "trx_category": 4}
    module = build_module(c, build_seq_encoder(c, sizes))
    n = args.clients * 5
    batch = collate_feature_dict(
        [
            {
                **{k: torch.randint(1, s, (args.len,)) for k, s in sizes.items()},
                "amount": torch.rand(args.len) * 1000,
                "event_time": torch.arange(args.len),
                **{f: torch.rand(args.len) * 30 for f in c.time_numeric},
            }
            for _ in range(n)
        ]
    )
    labels = torch.arange(args.clients).repeat_interleave(5)
    selectors = {"ptls": HardNegativePairSelector(neg_count=5), "fast": FastHardNegativePairSelector(neg_count=5)}
    losses = {k: ContrastiveLoss(margin=0.5, sampling_strategy=s) for k, s in selectors.items()}

    with torch.no_grad():
        emb = module._head(module.seq_encoder(batch))
    pairs = {k: s.get_pairs(emb, labels) for k, s in selectors.items()}
    assert all(torch.equal(a, b) for a, b in zip(pairs["ptls"], pairs["fast"])), "the selectors disagree"
    assert torch.isclose(losses["ptls"](emb, labels), losses["fast"](emb, labels), rtol=1e-6)

    def step(loss):
        module.zero_grad()
        out = loss(module._head(module.seq_encoder(batch)), labels)
        out.backward()

    def timed(fn, repeat):
        fn()  # warm-up
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - started) / repeat * 1000

    # Interleaved rounds, so background load hits both sides alike.
    step_ms = {k: 0.0 for k in selectors}
    sel_ms = {k: 0.0 for k in selectors}
    rounds = 4
    for _ in range(rounds):
        for k in selectors:
            step_ms[k] += timed(lambda: step(losses[k]), args.steps // rounds) / rounds
            sel_ms[k] += timed(lambda: selectors[k].get_pairs(emb, labels), 5 * args.steps // rounds) / rounds
    print(
        f"batch {args.clients} clients x 5 slices x {args.len} trx, GRU {args.hidden}, threads "
        f"{torch.get_num_threads()}; pairs and loss equal"
    )
    print("| selector | ms per training step | ms per pair selection |")
    print("|---|---|---|")
    for k in selectors:
        print(f"| {k} | {step_ms[k]:.1f} | {sel_ms[k]:.2f} |")
    print(
        f"ratio ptls / fast: step {step_ms['ptls'] / step_ms['fast']:.2f}x, "
        f"selection {sel_ms['ptls'] / sel_ms['fast']:.1f}x"
    )
    print(OmegaConf.to_yaml({"selector_share_of_ptls_step": round(sel_ms["ptls"] / step_ms["ptls"], 3)}).strip())


if __name__ == "__main__":
    main()
