"""How finely the default's test split resolves the report's gaps, and what the bootstrap costs.

Reads every seed's validation/predictions.parquet of a finished experiment (default: the smoke preset under
--output-root) and prints, for the gaps llm − coles and llm − aggregates (and any --pairs):
  1. the paired bootstrap 95 % interval on test (seeds pooled, report.bootstrap's method) and its width;
  2. the measured scaling of the width with the number of clients: the same gap on val (out-of-fold),
     subsampled to 1x, 2x and 4x the test size (the mean over 5 subsamples); the ratio width(4x) / width(1x)
     is ~0.5 if the width falls as 1/sqrt(n), which the projection below assumes;
  3. the projection: the dataset.n_clients whose test split halves the test width (4x the clients, the test
     split being a fixed fraction), and the one that reaches --target-width;
  4. the cost: the vectorised bootstrap of one gap (3 seeds, 1000 resamples) against a loop of sklearn's
     roc_auc_score over the same resamples (the reference, measured in the same run).
  PYTHONPATH=source .venv/bin/python bench/gap_resolution.py --output-root /tmp/out [--experiment smoke]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from llm4trx.core.config import compose
from llm4trx.core.stage import seed_stage_dir
from llm4trx.data.predictions import read_predictions
from llm4trx.evaluation.bootstrap import aligned, paired_gap, resample_counts


def width_of(metric, y, a, b, n_resamples, seed):
    gap = paired_gap(metric, y, a, b, resample_counts(len(y), n_resamples, seed))
    return gap, gap.high - gap.low


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-root", required=True)
    parser.add_argument("--experiment", default="smoke")
    parser.add_argument("--pairs", nargs="*", default=["llm:coles", "llm:aggregates"])
    parser.add_argument("--metric", default="auroc")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--target-width", type=float, default=0.04)
    args = parser.parse_args()

    cfg = compose([f"paths.output_root={args.output_root}", f"experiment={args.experiment}"])
    frames = {}
    for seed in cfg.seeds:
        path = seed_stage_dir(cfg, "validate", int(seed)) / "predictions.parquet"
        if path.is_file():
            frames[int(seed)] = read_predictions(path)
    if not frames:
        raise SystemExit(f"no predictions.parquet under {cfg.paths.experiment_dir}; run the experiment first")
    n_clients = int(cfg.dataset.n_clients)
    print(
        f"{cfg.paths.experiment_dir}: seeds {sorted(frames)}, dataset.n_clients {n_clients}, "
        f"{args.resamples} resamples, metric {args.metric}"
    )
    rng = np.random.default_rng(0)
    for pair in args.pairs:
        a, b = pair.split(":")
        ids, y, side_a = aligned(frames, a, "test", None)
        _, _, side_b = aligned(frames, b, "test", ids)
        seeds = [s for s in side_a if s in side_b]
        gap, width = width_of(args.metric, y, [side_a[s] for s in seeds], [side_b[s] for s in seeds], args.resamples, 0)
        n_test = len(y)
        print(
            f"\n{a} − {b}: test gap {gap.gap:+.4f} [{gap.low:+.4f}, {gap.high:+.4f}] {gap.verdict}; "
            f"width {width:.4f} on {n_test} test clients"
        )
        vids, vy, val_a = aligned(frames, a, "val", None)
        _, _, val_b = aligned(frames, b, "val", vids)
        widths = {}
        for factor in (1, 2, 4):
            m = factor * n_test
            if m > len(vy):
                break
            samples = []
            for _ in range(5):
                rows = rng.choice(len(vy), m, replace=False)
                samples.append(
                    width_of(
                        args.metric,
                        vy[rows],
                        [val_a[s][rows] for s in seeds],
                        [val_b[s][rows] for s in seeds],
                        args.resamples,
                        1,
                    )[1]
                )
            widths[factor] = float(np.mean(samples))
            print(f"  val out-of-fold subsampled to {m} clients ({factor}x test): width {widths[factor]:.4f}")
        if 4 in widths:
            print(f"  measured width(4x) / width(1x) = {widths[4] / widths[1]:.3f} (1/sqrt(n) predicts 0.500)")
        full = width_of(args.metric, vy, [val_a[s] for s in seeds], [val_b[s] for s in seeds], args.resamples, 1)
        print(
            f"  val out-of-fold, all {len(vy)} clients: gap {full[0].gap:+.4f} [{full[0].low:+.4f}, "
            f"{full[0].high:+.4f}] {full[0].verdict}; width {full[1]:.4f}"
        )
        print(
            f"  projection (width ∝ 1/sqrt(test clients), test = a fixed share of n_clients): half the width "
            f"({width / 2:.4f}) at dataset.n_clients ≈ {4 * n_clients}; width {args.target_width} at "
            f"≈ {int(np.ceil(n_clients * (width / args.target_width) ** 2))}"
        )

    # cost: the vectorised bootstrap of one gap against sklearn on the same resamples
    ids, y, side_a = aligned(frames, "llm", "test", None)
    _, _, side_b = aligned(frames, "coles", "test", ids)
    seeds = [s for s in side_a if s in side_b]
    counts = resample_counts(len(y), args.resamples, 0)
    started = time.perf_counter()
    paired_gap("auroc", y, [side_a[s] for s in seeds], [side_b[s] for s in seeds], counts)
    vectorised = time.perf_counter() - started
    started = time.perf_counter()
    picks = [np.repeat(np.arange(len(y)), row.astype(int)) for row in counts]
    loop = [
        np.mean([roc_auc_score(y[p], side_a[s][p, 1]) - roc_auc_score(y[p], side_b[s][p, 1]) for s in seeds])
        for p in picks
    ]
    reference = time.perf_counter() - started
    assert np.isfinite(loop).all()
    print(
        f"\nbootstrap cost, llm − coles on test, {len(seeds)} seeds x {args.resamples} resamples: vectorised "
        f"{vectorised:.3f} s, sklearn loop {reference:.3f} s (reference): {reference / vectorised:.1f}x faster"
    )


if __name__ == "__main__":
    main()
