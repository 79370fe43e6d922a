"""The pytorch-lifestream validation protocol on frozen features.

The fixed test clients (split == "test") and the folds of the other labeled clients come from
the prepare stage's splits (`llm4trx.data.splits.load_labels`). For fold k a model is trained on the other folds (MaxAbsScaler, then
LightGBM; or, validate.head=logistic, a linear probe: see `make_model`),
scored on fold k (validation) and on the test clients; a feature set reports the mean and std over the
folds of both. The field's tool, ptls-validation (embeddings_validation), does the same but is not
packaged and its configs fail on scikit-learn >= 1.6, hence this short reimplementation on sklearn +
lightgbm.

Row order matters: with bagging (subsample < 1) LightGBM draws rows by position, so the same clients in
another order give other models. Every feature set is trained and scored in the protocol's order: the
labeled clients in natural order (`data.splits.natural_sorted`: integer ids numerically), the order the
folds were assigned in and the order ptls-validation trains in when given the targets in that order. With
that order this module reproduces ptls-validation's per-fold scores exactly
(tests/test_protocol_reference.py, against stored outputs of the tool).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler

from llm4trx.core.errors import DataError
from llm4trx.data.splits import Labels, load_labels  # noqa: F401 (the protocol's labels, re-exported)


def _auroc(y, proba, classes):
    if len(classes) == 2:
        return roc_auc_score(y, proba[:, 1])
    return roc_auc_score(y, proba, multi_class="ovr", labels=classes)


def _accuracy(y, proba, classes):
    return accuracy_score(y, np.asarray(classes)[proba.argmax(1)])


METRICS: dict[str, Callable] = {"auroc": _auroc, "accuracy": _accuracy}


def feature_matrix(features: pd.DataFrame, ids: np.ndarray, source: str | Path) -> np.ndarray:
    """Rows of `ids` in that order; every labeled client must be present and every value finite."""
    missing = pd.Index(ids).difference(features.index)
    if len(missing):
        raise DataError(
            source, f"{len(missing)} labeled clients have no features, e.g. {list(missing[:3])}", column="client_id"
        )
    matrix = features.loc[ids].to_numpy(dtype=np.float32)
    bad = ~np.isfinite(matrix)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            source,
            f"{int(bad.sum())} NaN/inf values (first for client {ids[row]!r})",
            column=str(features.columns[col]),
        )
    return matrix


@dataclass(frozen=True)
class Head:
    """The downstream model fitted per fold: `kind` (one of HEADS) and its parameters (LightGBM's, or
    {Cs, cv, max_iter} of the linear probe)."""

    kind: str
    params: dict


def _lightgbm(params: dict, n_jobs: int):
    import lightgbm

    return make_pipeline(MaxAbsScaler(), lightgbm.LGBMClassifier(**params, n_jobs=n_jobs))


def _logistic(params: dict, n_jobs: int):
    # C picked by log-loss (a proper score for any number of classes) in an inner stratified split of the fold's
    # own training clients; lbfgs and an unshuffled split keep it deterministic.
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegressionCV(
        Cs=np.logspace(-4, 1, int(params["Cs"])),
        cv=int(params["cv"]),
        max_iter=int(params["max_iter"]),
        scoring="neg_log_loss",
        n_jobs=n_jobs,
        use_legacy_attributes=False,  # only predict_proba is read; silences scikit-learn's FutureWarning
    )
    return make_pipeline(StandardScaler(), model)


HEADS: dict[str, Callable] = {"lightgbm": _lightgbm, "logistic": _logistic}


def make_model(head: Head, n_jobs: int):
    return HEADS[head.kind](head.params, n_jobs)


def fold_threads(n_jobs: int, n_folds: int) -> tuple[int, int]:
    """(folds fitted at once, LightGBM threads each) for `n_jobs` cores. Folds run side by side first:
    LightGBM's OpenMP threads spin-wait and slow down badly when the cores are shared (measured: 2 threads
    on a busy 2-core machine ran 5-15x slower than 1), while separate single-threaded fits do not."""
    parallel = max(1, min(n_jobs, n_folds))
    return parallel, max(1, n_jobs // parallel)


@dataclass
class Predictions:
    """Per-client class probabilities of one feature set: out-of-fold for the cross-validated clients (each from
    the fold model that did not train on it) and, for the test clients, the mean over the fold models."""

    classes: np.ndarray
    val: np.ndarray  # (len(labels.train_ids), len(classes)), rows in labels.train_ids order
    test: np.ndarray  # (len(labels.test_ids), len(classes))


def cross_validate(*args, **kwargs) -> dict:
    """{metric: {val_mean, val_std, val_oof, test_mean, test_std, folds: [{fold, val, test}]}} for one feature
    set: the summary of cross_validate_predict (the same arguments), without the predictions."""
    return cross_validate_predict(*args, **kwargs)[0]


def cross_validate_predict(
    name: str,
    features: pd.DataFrame,
    labels: Labels,
    metrics: list[str],
    head: Head,
    n_jobs: int,
    source: str | Path,
    on_fold: Callable[[], None] | None = None,
) -> tuple[dict, Predictions]:
    """The protocol on one feature set: its summary (summarize_folds, plus `val_oof`: the metric on the
    out-of-fold predictions of all cross-validated clients at once) and its per-client predictions.
    A failing fold fails the whole call, naming the feature set and the fold."""
    from joblib import Parallel, delayed

    x_train = feature_matrix(features, labels.train_ids, source)
    x_test = feature_matrix(features, labels.test_ids, source)
    folds = sorted(int(f) for f in np.unique(labels.folds))
    parallel, threads = fold_threads(n_jobs, len(folds))

    def fit_fold(fold: int):
        fit_rows, val_rows = labels.folds != fold, labels.folds == fold
        try:
            model = make_model(head, threads).fit(x_train[fit_rows], labels.train_y[fit_rows])
            classes = model.classes_
            val_proba, test_proba = model.predict_proba(x_train[val_rows]), model.predict_proba(x_test)
            scores = {
                m: {
                    "fold": fold,
                    "val": float(METRICS[m](labels.train_y[val_rows], val_proba, classes)),
                    "test": float(METRICS[m](labels.test_y, test_proba, classes)),
                }
                for m in metrics
            }
            return fold, scores, classes, val_proba, test_proba
        except Exception as err:
            raise RuntimeError(f"feature set {name!r}, fold {fold}: {type(err).__name__}: {err}") from err

    # Threads suffice: LightGBM releases the GIL while it trains and predicts.
    per_fold: dict[str, list[dict]] = {m: [] for m in metrics}
    classes = np.unique(labels.train_y)
    oof = np.full((len(labels.train_ids), len(classes)), np.nan)
    test_sum = np.zeros((len(labels.test_ids), len(classes)))
    runner = Parallel(n_jobs=parallel, backend="threading", return_as="generator")
    for fold, scores, fold_classes, val_proba, test_proba in runner(delayed(fit_fold)(fold) for fold in folds):
        if not np.array_equal(fold_classes, classes):
            raise RuntimeError(
                f"feature set {name!r}, fold {fold}: trained on classes {list(fold_classes)}, "
                f"the labeled clients have {list(classes)} (a class missing from the other folds)"
            )
        oof[labels.folds == fold] = val_proba
        test_sum += test_proba
        for m in metrics:
            per_fold[m].append(scores[m])
        if on_fold is not None:
            on_fold()
    predictions = Predictions(classes, oof, test_sum / len(folds))
    summary = summarize_folds(per_fold)
    for m in metrics:
        summary[m]["val_oof"] = float(METRICS[m](labels.train_y, oof, classes))
    return summary, predictions


def summarize_folds(per_fold: dict[str, list[dict]]) -> dict[str, dict]:
    """{metric: val/test mean and std over the folds, and the folds' rows} from {metric: [{fold, val, test}]}."""
    result = {}
    for m, rows in per_fold.items():
        val, test = np.array([r["val"] for r in rows]), np.array([r["test"] for r in rows])
        # std over the 5 folds with ddof=1, as pandas reports it (the embeddings_validation tables do the same).
        result[m] = {
            "val_mean": float(val.mean()),
            "val_std": float(val.std(ddof=1)),
            "test_mean": float(test.mean()),
            "test_std": float(test.std(ddof=1)),
            "folds": rows,
        }
    return result
