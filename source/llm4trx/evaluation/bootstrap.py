"""Paired bootstrap intervals of metric gaps between two feature sets, over clients, seeds pooled.

A resample draws the clients with replacement; it is stored as a count matrix W (resamples x clients), so a
metric on every resample is one weighted computation over the original rows (numpy, no Python loop over
resamples): AUROC from the sorted scores and per-resample cumulative class weights, accuracy as a weighted
mean. The same W serves both feature sets and every seed (paired), and the statistic of one resample is the
gap averaged over the seeds. The interval is the 2.5 / 97.5 percentile of the resampled gaps; the verdict says
whether 0 lies outside it.

With several seeds a resample can also draw the seeds with replacement (`resample_seeds`, the report's default):
the interval then covers which training seeds were run as well as which clients (a two-level bootstrap). Needed
because two seeds of one configuration differ by more than the clients' interval: on the default run, llm val
AUROC of seed 21 minus seed 42 is -0.015 [-0.027, -0.004] over clients alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VERDICTS = ("better", "not distinguishable", "worse")


def resample_counts(n_clients: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_clients) counts: how often each client is drawn in each resample (each row sums to n)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clients, np.full(n_clients, 1.0 / n_clients), size=n_resamples).astype(np.float64)


def resample_seeds(n_seeds: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_seeds) indices into the seeds, drawn with replacement (a stream apart from the clients')."""
    return np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_resamples, n_seeds))


def weighted_binary_auroc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of `score` for the positives `y` (bool) under each row of `weights` (R x n); ties count half, as
    sklearn's roc_auc_score. Integer weights give exactly the AUROC of the rows repeated that often."""
    order = np.argsort(score, kind="stable")
    s, pos = score[order], np.asarray(y, dtype=bool)[order]
    w = np.atleast_2d(weights)[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    neg_w = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    pos_w = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)
    below = np.cumsum(neg_w, axis=1) - neg_w  # negative weight strictly below each group
    wins = (pos_w * (below + 0.5 * neg_w)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / (pos_w.sum(axis=1) * neg_w.sum(axis=1))  # NaN where a resample lacks a class


def weighted_metric(metric: str, y: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`metric` (auroc | accuracy, as evaluation.protocol's) per row of `weights`; classes are 0..K-1 by column."""
    y = np.asarray(y)
    weights = np.atleast_2d(weights)
    n_classes = proba.shape[1]
    if metric == "auroc":
        if n_classes == 2:
            return weighted_binary_auroc(y == 1, proba[:, 1], weights)
        # one-vs-rest, macro average (sklearn's multi_class="ovr")
        return np.mean([weighted_binary_auroc(y == c, proba[:, c], weights) for c in range(n_classes)], axis=0)
    if metric == "accuracy":
        correct = (proba.argmax(axis=1) == y).astype(np.float64)
        return weights @ correct / weights.sum(axis=1)
    raise ValueError(f"metric {metric!r} has no bootstrap; choose auroc or accuracy")


@dataclass
class Gap:
    gap: float  # on all clients, averaged over seeds
    low: float
    high: float
    verdict: str
    n_clients: int
    n_seeds: int

    def as_dict(self) -> dict:
        return {
            "gap": self.gap,
            "low": self.low,
            "high": self.high,
            "verdict": self.verdict,
            "n_clients": self.n_clients,
            "n_seeds": self.n_seeds,
        }


def verdict(low: float, high: float) -> str:
    if low > 0:
        return VERDICTS[0]
    if high < 0:
        return VERDICTS[2]
    return VERDICTS[1]


def paired_gap(
    metric: str,
    y: np.ndarray,
    proba_a: list[np.ndarray],
    proba_b: list[np.ndarray],
    counts: np.ndarray,
    level: float = 0.95,
    seed_draws: np.ndarray | None = None,
) -> Gap:
    """Gap metric(a) - metric(b): its value on all clients and its paired bootstrap interval. `proba_a[i]` and
    `proba_b[i]` are seed i's (clients x classes) probabilities, rows in the order of `y`; `counts` comes from
    resample_counts(len(y), ...). `seed_draws` (from resample_seeds(len(proba_a), len(counts), ...)): resample r
    averages the gaps of seeds seed_draws[r] instead of every seed once."""
    if len(proba_a) != len(proba_b) or not proba_a:
        raise ValueError(f"need the same seeds for both sides, got {len(proba_a)} and {len(proba_b)}")
    everyone = np.ones((1, len(y)))
    point = np.mean(
        [
            weighted_metric(metric, y, a, everyone) - weighted_metric(metric, y, b, everyone)
            for a, b in zip(proba_a, proba_b)
        ]
    )
    per_seed = np.array(
        [
            weighted_metric(metric, y, a, counts) - weighted_metric(metric, y, b, counts)
            for a, b in zip(proba_a, proba_b)
        ]
    )  # (seeds, resamples)
    if seed_draws is None:
        resampled = per_seed.mean(axis=0)
    else:
        if seed_draws.shape[0] != per_seed.shape[1] or seed_draws.max() >= len(proba_a):
            raise ValueError(f"seed_draws {seed_draws.shape} do not fit {len(proba_a)} seeds x {len(counts)} resamples")
        resampled = per_seed[seed_draws, np.arange(per_seed.shape[1])[:, None]].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(resampled, [tail, 100 - tail])
    return Gap(float(point), float(low), float(high), verdict(low, high), len(y), len(proba_a))


# The gaps the report states: the LM against each baseline, and what the LM adds to a baseline.
GAPS = (
    ("llm", "aggregates"),
    ("llm", "coles"),
    ("llm", "random"),
    ("llm+aggregates", "aggregates"),
    ("llm+coles", "coles"),
    ("llm+coles", "llm"),
)


def aligned(frames: dict, name: str, split: str, ids: np.ndarray | None):
    """(client ids, targets, {seed: probabilities}) of feature set `name` on `split` in each seed's frame (the
    llm4trx.data.predictions contract) that has it, rows in the order of `ids` (default: the first seed's)."""
    by_seed = {}
    targets = None
    for seed, frame in frames.items():
        rows = frame[(frame["feature_set"] == name) & (frame["split"] == split)].set_index("client_id")
        if rows.empty:
            continue
        if ids is None:
            ids = rows.index.to_numpy()
        if len(rows) != len(ids) or not rows.index.isin(ids).all():
            raise ValueError(
                f"seed {seed}: feature set {name!r} has {len(rows)} {split} clients, "
                f"the other seeds {len(ids)} (results of different splits?)"
            )
        rows = rows.loc[ids]
        columns = [c for c in rows.columns if c.startswith("p_")]
        by_seed[seed] = rows[columns].to_numpy(dtype=np.float64)
        classes = [c[2:] for c in columns]
        labels = rows["target"].astype(str).to_numpy()
        targets = (
            np.searchsorted(classes, labels)
            if classes == sorted(classes)
            else np.array([classes.index(v) for v in labels])
        )
    return ids, targets, by_seed


def pairs_for(names, pairs=GAPS) -> list[tuple[str, str]]:
    """`pairs` for every LM row among `names`: `llm` itself and each applied model's `llm:<name>` (embed.model),
    substituted for `llm` inside concatenations too."""
    llms = sorted(n for n in names if n == "llm" or (n.startswith("llm:") and "+" not in n)) or ["llm"]
    out = []
    for llm in llms:

        def sub(name: str) -> str:
            return "+".join(llm if part == "llm" else part for part in name.split("+"))

        out += [p for p in ((sub(a), sub(b)) for a, b in pairs) if p not in out]
    return out


def report_gaps(
    frames: dict,
    metrics: list[str],
    n_resamples: int,
    seed: int,
    level: float = 0.95,
    pairs=None,
    seeds_resampled: bool = True,
) -> list[dict]:
    """Every pair (a, b) present in the seeds' prediction frames ({seed: frame}): per split (test, val) and
    metric, metric(a) - metric(b) averaged over the seeds that have both, with its paired bootstrap interval.
    The resamples of a split are the same for every pair, metric and seed. pairs: default GAPS for every LM row.
    seeds_resampled: each resample also draws the seeds with replacement (where there are two or more)."""
    if pairs is None:
        pairs = pairs_for({name for frame in frames.values() for name in frame["feature_set"].unique()})
    out = []
    for split in ("test", "val"):
        counts = None
        for a, b in pairs:
            ids, y, side_a = aligned(frames, a, split, None)
            if not side_a:
                continue
            _, _, side_b = aligned(frames, b, split, ids)
            seeds = [s for s in side_a if s in side_b]
            if not seeds:
                continue
            if counts is None or counts.shape[1] != len(ids):
                counts = resample_counts(len(ids), n_resamples, seed)
            draws = resample_seeds(len(seeds), n_resamples, seed) if seeds_resampled and len(seeds) > 1 else None
            for metric in metrics:
                a_seeds, b_seeds = [side_a[s] for s in seeds], [side_b[s] for s in seeds]
                gap = paired_gap(metric, y, a_seeds, b_seeds, counts, level, draws)
                out.append({"a": a, "b": b, "split": split, "metric": metric, **gap.as_dict()})
    return out
