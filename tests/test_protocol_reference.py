"""Our validation protocol against the field's reference tool, ptls-validation (dllllb/ptls-validation).

tests/data/ptls_validation/ holds a small fixture (targets, splits, two float32 feature files) and the
per-fold scores and folds that ptls-validation itself produced on it with our LightGBM parameters (how: the
README there). These tests run from those stored files only: no network, no luigi.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError
from llm4trx.data.embeddings import read_embeddings
from llm4trx.evaluation.features import concatenate
from llm4trx.evaluation.protocol import Head, Labels, cross_validate, load_labels
from llm4trx.evaluation.tables import results_table
from llm4trx.report import lightgbm_seeds
from llm4trx.core.sections import ValidationSpec
from llm4trx.evaluation.validation import lightgbm_params

HERE = Path(__file__).resolve().parent / "data" / "ptls_validation"
META = json.loads((HERE / "params.json").read_text())
REFERENCE = json.loads((HERE / "reference_scores.json").read_text())["scores"]
REFERENCE_FOLDS = json.loads((HERE / "reference_folds.json").read_text())
N_FOLDS = META["splits"]["n_folds"]
TOLERANCE = 1e-9  # LightGBM is deterministic here (deterministic=true, one thread per fold): equal in practice
SCHEMA = {"binary": "rosbank", "multiclass": "age_pred"}  # a synthetic dataset schema of each task


def feature_set(name: str):
    parts = {p: read_embeddings(HERE / f"features_{p}.parquet", "client_id", p) for p in META["feature_sets"][name]}
    return concatenate(name, parts) if len(parts) > 1 else parts[name]


def run_protocol(task: str, name: str, labels: Labels) -> dict:
    return cross_validate(
        name,
        feature_set(name),
        labels,
        META["metrics"][task],
        Head("lightgbm", META["lightgbm"][task]),
        n_jobs=2,
        source=name,
    )  # n_jobs=2: the default, folds fitted side by side


def differences(task: str, name: str, result: dict) -> list[float]:
    diffs = []
    for metric in META["metrics"][task]:
        for ours, ref in zip(result[metric]["folds"], REFERENCE[task][name], strict=True):
            assert ours["fold"] == ref["fold"]
            diffs += [abs(ours["val"] - ref[metric]["val"]), abs(ours["test"] - ref[metric]["test"])]
    return diffs


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_folds_test_clients_and_row_order_are_the_references(task):
    labels = load_labels(HERE / task, N_FOLDS)
    for fold in range(N_FOLDS):
        # Same clients in each validation fold, in the same order (the tool keeps the target file's order).
        assert list(labels.train_ids[labels.folds == fold]) == REFERENCE_FOLDS[task][str(fold)], fold
    assert list(labels.test_ids) == REFERENCE_FOLDS[task]["test"]
    assert [int(i) for i in labels.train_ids] == sorted(int(i) for i in labels.train_ids)  # numeric order
    assert sorted(labels.train_ids) != list(labels.train_ids)  # ... which is not the string order here


# Multiclass: 1000 rounds x 4 classes per fold model, ~5-8 s per feature set on a busy 2-core machine.
CASES = [
    pytest.param(t, n, marks=[pytest.mark.slow] if t == "multiclass" else [])
    for t in ("binary", "multiclass")
    for n in META["feature_sets"]
]


@pytest.mark.parametrize("task,name", CASES)
def test_protocol_reproduces_ptls_validation_per_fold(task, name):
    result = run_protocol(task, name, load_labels(HERE / task, N_FOLDS))
    assert max(differences(task, name, result)) <= TOLERANCE
    for metric in META["metrics"][task]:
        ref = np.array([[f[metric]["val"], f[metric]["test"]] for f in REFERENCE[task][name]])
        assert result[metric]["val_mean"] == pytest.approx(ref[:, 0].mean(), abs=TOLERANCE)
        assert result[metric]["test_std"] == pytest.approx(ref[:, 1].std(ddof=1), abs=TOLERANCE)


def test_string_id_order_would_not_reproduce_the_reference():
    """The check can fail: the same clients trained in string-id order (the old order) give other models."""
    labels = load_labels(HERE / "binary", N_FOLDS)
    order = np.argsort(labels.train_ids.astype(str), kind="stable")
    shuffled = Labels(
        labels.train_ids[order], labels.train_y[order], labels.folds[order], labels.test_ids, labels.test_y
    )
    assert max(differences("binary", "emb", run_protocol("binary", "emb", shuffled))) > 1e-4


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_stored_reference_used_our_default_lightgbm_parameters(task):
    cfg = compose(["dataset=synthetic", f"dataset.schema={SCHEMA[task]}"])
    assert lightgbm_params(ValidationSpec.from_config(cfg)) == META["lightgbm"][task], (
        "the default LightGBM parameters changed: rerun tests/data/ptls_validation/make_reference.py "
        "(see the README there) so that the stored reference uses them"
    )


def test_lightgbm_seed_fixed_by_default_and_run_on_request():
    fixed = compose(["dataset=synthetic", "seed=7"])
    assert (
        fixed.validate.lightgbm_seed == "fixed"
        and lightgbm_params(ValidationSpec.from_config(fixed))["random_state"] == 42
    )
    assert (
        lightgbm_params(
            ValidationSpec.from_config(compose(["dataset=synthetic", "seed=7", "validate.lightgbm_seed=run"]))
        )["random_state"]
        == 7
    )
    with pytest.raises(ConfigError, match=r"validate.lightgbm_seed='seed': should be 'fixed' or 'run'"):
        lightgbm_params(ValidationSpec.from_config(compose(["dataset=synthetic", "validate.lightgbm_seed=seed"])))


def test_results_and_report_say_which_lightgbm_seed_was_used():
    entry = {"n_features": 1, "auroc": {"val_mean": 0.7, "val_std": 0.0, "test_mean": 0.7, "test_std": 0.0}}
    results = {
        "dataset": "d",
        "task": "binary",
        "metrics": ["auroc"],
        "n_folds": 5,
        "n_train": 10,
        "n_test": 2,
        "feature_sets": {"llm": entry},
        "lightgbm_seed": {"mode": "fixed", "random_state": 42},
    }
    assert "LightGBM random_state 42 (validate.lightgbm_seed=fixed: fixed, as ptls-experiments)" in results_table(
        results
    )
    fixed = {"mode": "fixed", "random_state": 42}
    assert lightgbm_seeds({1: {"lightgbm_seed": fixed}, 2: {"lightgbm_seed": fixed}}).startswith(
        "fixed at 42 in every seed"
    )
    assert lightgbm_seeds(
        {
            1: {"lightgbm_seed": {"mode": "run", "random_state": 1}},
            2: {"lightgbm_seed": {"mode": "run", "random_state": 2}},
        }
    ).startswith("each seed's own seed")
    assert lightgbm_seeds({1: {"lightgbm_seed": fixed}, 2: {}}).startswith("not recorded for seeds 2")
