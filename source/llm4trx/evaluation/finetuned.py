"""Scoring fine-tuned models' predictions (finetune/predictions.parquet) exactly as validate scores feature sets:
per fold the dataset's metrics (evaluation/protocol.py's METRICS) on the held-out fold and on the fixed test
clients; val mean ± std over the folds, test mean ± std over the fold models (std with ddof=1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llm4trx.core.errors import DataError
from llm4trx.evaluation.protocol import METRICS, Labels, Predictions, summarize_folds


def probability_matrix(rows: pd.DataFrame, ids: np.ndarray, n_classes: int, path: Path, what: str) -> np.ndarray:
    """Rows of `ids` in that order; each client exactly once."""
    indexed = rows.set_index("client_id")
    if indexed.index.duplicated().any():
        raise DataError(
            path, f"{what}: client {indexed.index[indexed.index.duplicated()][0]!r} predicted twice", column="client_id"
        )
    missing = pd.Index(ids).difference(indexed.index)
    extra = indexed.index.difference(pd.Index(ids))
    if len(missing) or len(extra):
        raise DataError(
            path,
            f"{what}: {len(missing)} clients without a prediction, {len(extra)} unexpected "
            f"(e.g. {list(missing[:2]) + list(extra[:2])}); rebuild with python -m llm4trx.finetune",
            column="client_id",
        )
    return indexed.loc[ids, [f"p_{c}" for c in range(n_classes)]].to_numpy(dtype=np.float64)


def score_predictions(
    path: Path, run: str, labels: Labels, metrics: list[str], n_classes: int
) -> tuple[dict, Predictions]:
    """The summary of one run (as protocol.cross_validate_predict's, `val_oof` included) and its per-client
    predictions: each held-out fold's for the cross-validated clients, the fold models' mean on test."""
    frame = pd.read_parquet(path)
    for column in ["run", "fold", "part", "client_id"] + [f"p_{c}" for c in range(n_classes)]:
        if column not in frame.columns:
            raise DataError(path, "column missing", column=column)
    frame = frame[frame["run"] == run].astype({"client_id": str})
    if frame.empty:
        raise DataError(path, f"no predictions of run {run!r}; rebuild with python -m llm4trx.finetune", column="run")
    classes = np.arange(n_classes)
    train_ids = labels.train_ids.astype(str)
    per_fold: dict[str, list[dict]] = {m: [] for m in metrics}
    oof = np.full((len(train_ids), n_classes), np.nan)
    test_sum = np.zeros((len(labels.test_ids), n_classes))
    folds = sorted(int(k) for k in np.unique(labels.folds))
    for fold in folds:
        rows = frame[frame["fold"] == fold]
        held = labels.folds == fold
        val = probability_matrix(
            rows[rows["part"] == "val"], train_ids[held], n_classes, path, f"{run} fold {fold} val"
        )
        test = probability_matrix(
            rows[rows["part"] == "test"], labels.test_ids.astype(str), n_classes, path, f"{run} fold {fold} test"
        )
        oof[held], test_sum = val, test_sum + test
        for m in metrics:
            per_fold[m].append(
                {
                    "fold": fold,
                    "val": float(METRICS[m](labels.train_y[held], val, classes)),
                    "test": float(METRICS[m](labels.test_y, test, classes)),
                }
            )
    summary = summarize_folds(per_fold)
    for m in metrics:
        summary[m]["val_oof"] = float(METRICS[m](labels.train_y, oof, classes))
    return summary, Predictions(classes, oof, test_sum / len(folds))
