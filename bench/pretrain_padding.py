"""Padding in CPU pretraining through the real path (llm-foundry + Composer, `python -m llm4trx.pretrain`):
batches of random clients (trainer.length_bucketing=false, the path before bucketing) against length-bucketed
batches (true, windows of trainer.bucket_window batches) and packed batches (trainer.packing=true: the same
batches, clients laid end to end in rows, lm/packing.py; in one microbatch, or one row per microbatch, each cut
to its row: no padding), measured in one run on the same shards.

Builds the smoke preset's shared stages (prepare, text, tokenizer, shards) for `--clients` synthetic clients
(the default generator: 20..200 transactions per client, text=fields), then trains the smoke model for
`--steps` optimizer steps per variant and prints, from each run's _SUCCESS.json: real (non-padding) tokens per
second of Composer's training wall-clock, the padded share of the trained positions, and the ratio of each
variant's real tokens/s to the reference's. Variants run one after the other, alternating, `--repeats` times
(the best of each kept: this machine is shared).

    PYTHONPATH=source .venv/bin/python bench/pretrain_padding.py [--clients 1500 --steps 60 --windows 4,16,64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from llm4trx import prepare, pretrain, shards, text, tokenizer
from llm4trx.core.config import compose
from llm4trx.core.stage import read_success
from llm4trx.data.curves import last_losses


def packed_padding_by_batch(mds_train: Path, width: int, batch_sizes: str, draws: int = 300) -> None:
    """The padded share of packed batches (lm/packing.pack_rows, rows padded to the batch's longest row, as
    PackedCollator does) against unpacked ones (padded to the longest client), for random batches of each size
    drawn from the train shards' token lengths: packing's padding depends on how many clients share a batch."""
    import numpy as np
    from streaming import LocalDataset

    from llm4trx.lm.packing import pack_rows

    shards = LocalDataset(str(mds_train))
    lengths = np.array([len(shards[i]["tokens"]) for i in range(len(shards))])
    rng = np.random.default_rng(0)
    print(
        f"\n{'clients per batch':>18s} {'padded, unpacked':>17s} {'padded, packed':>15s}  ({draws} random batches each)"
    )
    for size in (int(b) for b in batch_sizes.split(",")):
        real = unpacked = packed = 0
        for _ in range(draws):
            batch = lengths[rng.choice(len(lengths), min(size, len(lengths)), replace=False)]
            rows = pack_rows(batch.tolist(), width)
            real += batch.sum()
            unpacked += len(batch) * batch.max()
            packed += len(rows) * max(batch[r].sum() for r in rows)
        print(f"{size:18d} {1 - real / unpacked:17.1%} {1 - real / packed:15.1%}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1500)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--windows", default="16", help="bucket_window values to measure (comma-separated)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--batch-sizes",
        default="8,16,32,64,128",
        help="clients per batch for the packed-layout table (padding from the shards' lengths, no training)",
    )
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="llm4trx-padding-"))
    base = [
        "experiment=smoke",
        f"paths.output_root={out}",
        "progress=false",
        f"dataset.n_clients={args.clients}",
        f"trainer.cpu_threads={args.threads}",
        f"trainer.max_duration={args.steps}ba",
        f"trainer.eval_interval={args.steps}ba",
        "trainer.eval_first=false",
        f"trainer.save_interval={args.steps}ba",
        "trainer.eval_subset_num_batches=1",
    ]
    cfg = compose(base)
    for stage in (prepare, text, tokenizer, shards):
        stage.run(cfg)
    print(
        f"{args.clients} synthetic clients, smoke model, {args.steps} steps of "
        f"{cfg.trainer.global_train_batch_size} clients, max_seq_len {cfg.max_seq_len}, {args.threads} thread(s), "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    variants = {"reference: random batches": ["trainer.length_bucketing=false", "trainer.packing=false"]}
    variants["packed (same batches)"] = ["trainer.length_bucketing=false", "trainer.packing=true"]
    variants["packed, 1 row per microbatch"] = [
        "trainer.length_bucketing=false",
        "trainer.packing=true",
        "trainer.device_train_microbatch_size=1",
    ]
    for w in args.windows.split(","):
        variants[f"bucketed, window {w} batches"] = [
            "trainer.length_bucketing=true",
            f"trainer.bucket_window={w}",
            "trainer.packing=false",
        ]
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, extra in variants.items():
            folder = pretrain.run(compose([*base, *extra, "force=true"]))
            done = {**read_success(folder)["counts"], "train_loss": last_losses(folder).get("train")}
            if name not in best or done["real_tokens_per_s"] > best[name]["real_tokens_per_s"]:
                best[name] = done
    ref = best["reference: random batches"]["real_tokens_per_s"]
    print(
        f"\n{'variant':34s} {'real tokens/s':>14s} {'padded share':>13s} {'real tokens':>12s} {'last train loss':>16s} {'ratio':>7s}"
    )
    for name, done in best.items():
        print(
            f"{name:34s} {done['real_tokens_per_s']:14,.0f} {done['padded_share']:13.1%} "
            f"{done['tokens_seen']:12,d} {done['train_loss']:16.4f} {done['real_tokens_per_s'] / ref:6.2f}x"
        )
    print(f"(best of {args.repeats}; ratio: real tokens/s against the reference, same run; goal: padded share <= 10 %)")
    # after training: the shards are read as the pretraining read them (decompressed in place by streaming)
    packed_padding_by_batch(Path(cfg.paths.shared_dir) / "mds" / "train", cfg.max_seq_len, args.batch_sizes)


if __name__ == "__main__":
    main()
