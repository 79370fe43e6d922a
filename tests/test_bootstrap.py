"""Paired bootstrap of metric gaps (llm4trx.evaluation.bootstrap): exact weighted metrics, verdicts, coverage."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from llm4trx.evaluation.bootstrap import paired_gap, resample_counts, resample_seeds, weighted_metric


def binary_proba(score):
    return np.stack([1 - score, score], axis=1)


def test_weighted_metrics_equal_sklearn_on_the_repeated_rows():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    score = np.round(rng.random(60), 1)  # many ties
    counts = resample_counts(60, 5, seed=1)
    got = weighted_metric("auroc", y, binary_proba(score), counts)
    for row, value in zip(counts.astype(int), got):
        assert value == pytest.approx(roc_auc_score(np.repeat(y, row), np.repeat(score, row)), abs=1e-12)
    acc = weighted_metric("accuracy", y, binary_proba(score), counts)
    for row, value in zip(counts.astype(int), acc):
        assert value == pytest.approx(accuracy_score(np.repeat(y, row), np.repeat(score > 0.5, row)))
    # multiclass: one-vs-rest macro AUROC, as the protocol's roc_auc_score(multi_class="ovr")
    y3 = rng.integers(0, 3, 80)
    proba = rng.dirichlet(np.ones(3), 80)
    counts = resample_counts(80, 3, seed=2)
    for row, value in zip(counts.astype(int), weighted_metric("auroc", y3, proba, counts)):
        assert value == pytest.approx(
            roc_auc_score(np.repeat(y3, row), np.repeat(proba, row, axis=0), multi_class="ovr", labels=[0, 1, 2]),
            abs=1e-12,
        )


def test_a_known_difference_is_better_and_the_reverse_worse():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    strong = [binary_proba(1 / (1 + np.exp(-(2.5 * (y - 0.5) + rng.standard_normal(300))))) for _ in range(3)]
    weak = [binary_proba(1 / (1 + np.exp(-(0.5 * (y - 0.5) + rng.standard_normal(300))))) for _ in range(3)]
    counts = resample_counts(300, 500, seed=0)
    gap = paired_gap("auroc", y, strong, weak, counts)
    assert gap.verdict == "better" and 0 < gap.low < gap.gap < gap.high, gap
    assert paired_gap("auroc", y, weak, strong, counts).verdict == "worse"
    assert gap.n_seeds == 3 and gap.n_clients == 300


def test_resampling_the_seeds_widens_the_interval_where_seeds_disagree():
    """Two seeds whose gaps have opposite signs (training noise larger than the clients' noise): over clients
    alone the seed-averaged gap is 'better'; drawing the seeds too, 0 is inside the interval. Where every seed
    gives the same predictions, drawing the seeds changes nothing."""
    rng = np.random.default_rng(3)
    n = 3000
    y = rng.integers(0, 2, n)

    def model(strength):
        return binary_proba(1 / (1 + np.exp(-(strength * (y - 0.5) + rng.standard_normal(n)))))

    mid = model(1.0)
    a, b = [model(2.0), model(0.8)], [mid, mid]  # seed 1: a far ahead; seed 2: a a little behind
    counts = resample_counts(n, 1000, seed=0)
    draws = resample_seeds(2, 1000, seed=0)
    assert draws.shape == (1000, 2) and set(np.unique(draws)) == {0, 1}
    fixed = paired_gap("auroc", y, a, b, counts)
    drawn = paired_gap("auroc", y, a, b, counts, seed_draws=draws)
    assert fixed.verdict == "better" and drawn.verdict == "not distinguishable", (fixed, drawn)
    assert drawn.gap == fixed.gap and drawn.high - drawn.low > 3 * (fixed.high - fixed.low)
    same_a, same_b = [a[0], a[0]], [b[0], b[0]]
    one = paired_gap("auroc", y, same_a, same_b, counts)
    assert paired_gap("auroc", y, same_a, same_b, counts, seed_draws=draws) == one


def test_identical_predictions_give_an_interval_around_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    same = [binary_proba(rng.random(200))]
    gap = paired_gap("auroc", y, same, same, resample_counts(200, 200, seed=0))
    assert gap.low <= 0 <= gap.high and gap.gap == 0 and gap.verdict == "not distinguishable"
    # two noise predictors that differ only by chance: not distinguishable either
    noise = paired_gap(
        "accuracy",
        y,
        [binary_proba(rng.random(200))],
        [binary_proba(rng.random(200))],
        resample_counts(200, 500, seed=0),
    )
    assert noise.verdict == "not distinguishable", noise


def test_the_95_percent_interval_covers_the_true_gap_about_95_percent_of_the_time():
    """Simulated paired classifiers with known accuracies 0.75 and 0.70: over 200 test sets of 200 clients the
    interval must contain the true gap 0.05 in ~95 % of them (binomial sd 1.5 %)."""
    rng = np.random.default_rng(7)
    n, trials, hits = 200, 200, 0
    y = np.zeros(n, dtype=int)
    counts = resample_counts(n, 400, seed=3)  # the same resampling scheme, new data each trial
    for _ in range(trials):
        u = rng.random(n)  # correlated correctness: A is right when u < 0.75, B when u < 0.70 or by luck
        a_right = u < 0.75
        b_right = np.where(rng.random(n) < 0.8, u < 0.70, rng.random(n) < 0.70)
        a = binary_proba(np.where(a_right, 0.2, 0.8))
        b = binary_proba(np.where(b_right, 0.2, 0.8))
        gap = paired_gap("accuracy", y, [a], [b], counts)
        hits += gap.low <= 0.05 <= gap.high
    assert 0.89 <= hits / trials <= 0.99, hits / trials


def test_auroc_on_a_thousand_resamples_takes_well_under_a_second():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2400)
    a, b = [binary_proba(rng.random(2400)) for _ in range(3)], [binary_proba(rng.random(2400)) for _ in range(3)]
    counts = resample_counts(2400, 1000, seed=0)
    started = time.perf_counter()
    paired_gap("auroc", y, a, b, counts)
    assert time.perf_counter() - started < 5.0  # ~0.5 s seen on an idle core (3 seeds x 2 sets x 1000 x 2400)


def test_gaps_are_stated_for_an_applied_models_row_too():
    from llm4trx.evaluation.bootstrap import GAPS, pairs_for

    assert pairs_for({"llm", "coles", "aggregates"}) == list(GAPS)
    applied = pairs_for({"llm:other-run", "llm:other-run+aggregates", "aggregates", "coles"})
    assert ("llm:other-run", "coles") in applied and ("llm:other-run+aggregates", "aggregates") in applied
    assert all("llm" not in a.split("+") for a, _ in applied)
