"""The pytorch-lifestream split protocol (llm4trx.data.splits)."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import SplitsSpec
from llm4trx.data.splits import make_splits, natural_sorted

CFG = SplitsSpec(test_fraction=0.1, n_folds=5, random_state=42, val_fraction=0.05)


def dataset(n_labeled=503, n_unlabeled=97, n_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in rng.permutation(10_000)[: n_labeled + n_unlabeled]]
    targets = pd.DataFrame({"client_id": ids[:n_labeled], "target": rng.integers(0, n_classes, n_labeled)})
    return ids, targets


def test_test_clients_are_the_last_tenth_of_the_seeded_shuffle_of_sorted_labeled_ids():
    ids, targets = dataset()
    splits = make_splits(ids, targets, CFG)
    # Independent computation, as ptls-experiments does it: integer ids sorted, Random(42).shuffle, last int(n*0.1).
    labeled = sorted(int(c) for c in targets["client_id"])
    random.Random(42).shuffle(labeled)
    n_test = int(len(labeled) * 0.1)
    expected = {str(c) for c in labeled[-n_test:]}
    assert set(splits.loc[splits["split"] == "test", "client_id"]) == expected
    assert len(expected) == 50


def test_folds_are_stratified_and_cover_exactly_the_labeled_non_test_clients():
    ids, targets = dataset(n_labeled=1000, n_classes=4)
    splits = make_splits(ids, targets, CFG).merge(targets, on="client_id", how="left")
    cv = splits[splits["labeled"] & (splits["split"] != "test")]
    assert set(cv["fold"]) == {0, 1, 2, 3, 4}
    assert (splits.loc[splits["split"] == "test", "fold"] == -1).all()
    assert (splits.loc[~splits["labeled"], "fold"] == -1).all()
    overall = cv["target"].value_counts(normalize=True)
    for _, fold in cv.groupby("fold"):
        share = fold["target"].value_counts(normalize=True).reindex(overall.index)
        assert np.abs(share - overall).max() < 0.02
    assert cv.groupby("fold").size().max() - cv.groupby("fold").size().min() <= 1 + 4  # per-class rounding


def test_unlabeled_and_val_clients_never_test_and_val_fraction_respected():
    ids, targets = dataset()
    splits = make_splits(ids, targets, CFG)
    assert set(splits["client_id"]) == set(ids) and len(splits) == len(ids)
    assert not (splits["split"] == "test")[~splits["labeled"]].any()
    pretrain = splits[splits["split"] != "test"]
    assert (pretrain["split"] == "val").sum() == round(len(pretrain) * 0.05)
    assert splits["labeled"].sum() == len(targets)
    assert splits["fold"].dtype == np.int8


def test_splits_are_deterministic_and_independent_of_input_order():
    ids, targets = dataset()
    a = make_splits(ids, targets, CFG)
    b = make_splits(list(reversed(ids)), targets.sample(frac=1, random_state=3), CFG)
    pd.testing.assert_frame_equal(a, b)
    other = make_splits(ids, targets, replace(CFG, random_state=7))
    assert set(other.loc[other["split"] == "test", "client_id"]) != set(a.loc[a["split"] == "test", "client_id"])


def test_natural_order_is_numeric_for_integer_ids_and_lexicographic_otherwise():
    assert natural_sorted(["10", "9", "100"]) == ["9", "10", "100"]
    assert natural_sorted(["b10", "a9", "a10"]) == ["a10", "a9", "b10"]


def test_too_few_labeled_clients_for_the_folds_is_a_config_error():
    ids, targets = dataset(n_labeled=8, n_unlabeled=0)
    with pytest.raises(ConfigError, match="n_folds"):
        make_splits(ids, targets, CFG)


def test_no_test_clients_when_the_fraction_rounds_to_zero():
    ids, targets = dataset(n_labeled=20, n_unlabeled=0)
    targets["target"] = np.arange(20) % 2
    splits = make_splits(ids, targets, replace(CFG, test_fraction=0.04))
    assert (splits["split"] != "test").all() and (splits["fold"] >= 0).all()
