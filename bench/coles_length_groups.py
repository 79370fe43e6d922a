"""CoLES's RNN in groups of similar length (LengthGroupedRnnEncoder) against ptls's one padded run, in a whole
training step of the coles stage.

A step: `--clients` clients x 5 SampleSlices of random codes and amounts, their lengths drawn as SampleSlices draws
them (uniform in [coles.cnt_min, coles.cnt_max] of the preset), through the preset's TrxEncoder and RNN, the
normalised head, ContrastiveLoss with the fast hard-negative selector, and the backward pass. Every variant
sees the same batches and starts from the same weights; its loss is checked against ptls's first. Prints ms
per step per number of groups and the ratio ptls (1 group) / each, measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/coles_length_groups.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/coles_length_groups.py --preset ptls_rosbank --clients 32
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke", help="conf/coles/<preset>.yaml (smoke: the CPU default's)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()

    from ptls.data_load.utils import collate_feature_dict

    from llm4trx.core.config import compose
    from llm4trx.core.sections import ColesSpec
    from llm4trx.evaluation.coles_model import build_module, build_seq_encoder

    c = ColesSpec.from_config(compose(["experiment=smoke", f"coles={args.preset}"]).coles)
    # The preset's categorical inputs (the rosbank schema's when it names none) and binned time features.
    categorical = list(c.categorical or ["mcc", "channel_type", "currency", "trx_category"])
    sizes = {k: 60 if k == "mcc" else 7 for k in categorical} | {k: 30 for k in c.time_features or []}
    g = torch.Generator().manual_seed(0)
    n = args.clients * 5
    lengths = torch.randint(int(c.cnt_min), int(c.cnt_max) + 1, (n,), generator=g).tolist()
    batch = collate_feature_dict(
        [
            {
                **{k: torch.randint(1, s, (m,), generator=g) for k, s in sizes.items()},
                "amount": torch.rand(m, generator=g) * 1000,
                "event_time": torch.arange(m),
                **{f: torch.rand(m, generator=g) * 30 for f in c.time_numeric or []},
            }
            for m in lengths
        ]
    )
    labels = torch.arange(args.clients).repeat_interleave(5)
    modules = {}
    for groups in [1, *args.groups]:
        torch.manual_seed(0)
        modules[groups] = build_module(c, build_seq_encoder(c, sizes, groups=groups))

    def step(module):
        torch.manual_seed(1)  # the TrxEncoder's embedding noise: the same in every variant
        module.zero_grad()
        out = module._loss(module._head(module.seq_encoder(batch)), labels)
        out.backward()
        return float(out)

    losses = {k: step(m) for k, m in modules.items()}
    for k, v in losses.items():
        assert abs(v - losses[1]) <= 1e-5 * abs(losses[1]), f"{k} groups: loss {v} vs ptls's {losses[1]}"

    # Interleaved rounds, so background load hits every variant alike.
    ms = {k: 0.0 for k in modules}
    rounds = 4
    for _ in range(rounds):
        for k, m in modules.items():
            started = time.perf_counter()
            for _ in range(args.steps // rounds):
                step(m)
            ms[k] += (time.perf_counter() - started) / args.steps * 1000
    padded = sum(max(lengths) - m for m in lengths) / (max(lengths) * n)
    print(
        f"coles={args.preset}: {args.clients} clients x 5 slices, lengths {min(lengths)}-{max(lengths)} "
        f"({padded:.1%} of the padded batch is padding), {c.encoder_type} {c.hidden_size}, threads "
        f"{torch.get_num_threads()}; losses equal to ptls's"
    )
    print("| RNN groups | ms per training step | ratio ptls / this |")
    print("|---|---|---|")
    for k in modules:
        name = "1 (ptls's RnnEncoder)" if k == 1 else str(k)
        print(f"| {name} | {ms[k]:.1f} | {ms[1] / ms[k]:.2f}x |")


if __name__ == "__main__":
    main()
