"""The per-client predictions file of the validation protocol (validation/predictions.parquet, and
baselines/predictions.parquet for the seed-independent feature sets): one row per feature set and labeled
client, written by validate and baselines, read by validate (the baselines' rows) and by the report (bootstrap
intervals of the gaps).

Columns: client_id (string), feature_set, split ("val": out-of-fold, from the fold model that did not train on
the client; "test": the mean of the fold models), fold (the client's fold; -1 for test), target, and one
probability column p_<class> per class, in the classes' sorted order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llm4trx.core.errors import DataError

SPLITS = ("val", "test")
KEYS = ["client_id", "feature_set", "split", "fold", "target"]


def prediction_rows(
    feature_set: str,
    classes,
    train_ids,
    train_y,
    folds,
    val_proba: np.ndarray,
    test_ids,
    test_y,
    test_proba: np.ndarray,
) -> pd.DataFrame:
    n_val, n_test = len(train_ids), len(test_ids)
    frame = pd.DataFrame(
        {
            "client_id": pd.array(
                np.concatenate([np.asarray(train_ids), np.asarray(test_ids)]).astype(str), dtype="string"
            ),
            "feature_set": feature_set,
            "split": ["val"] * n_val + ["test"] * n_test,
            "fold": np.concatenate([np.asarray(folds, dtype=np.int64), np.full(n_test, -1, dtype=np.int64)]),
            "target": np.concatenate([np.asarray(train_y), np.asarray(test_y)]),
        }
    )
    proba = np.concatenate([val_proba, test_proba]).astype(np.float64)
    for j, c in enumerate(classes):
        frame[f"p_{c}"] = proba[:, j]
    return frame


def write_predictions(frames: list[pd.DataFrame], path: Path) -> None:
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=KEYS)
    frame.to_parquet(path, index=False)


def probability_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("p_")]


def read_predictions(path: Path) -> pd.DataFrame:
    """The predictions file, checked: the key columns, known splits, probabilities finite, one row per
    (feature set, split, client)."""
    if not Path(path).is_file():
        raise DataError(path, "missing (written by python -m llm4trx.validate)")
    frame = pd.read_parquet(path)
    for column in KEYS:
        if column not in frame.columns:
            raise DataError(path, "column missing", column=column)
    columns = probability_columns(frame)
    if len(columns) < 2:
        raise DataError(path, f"expected a probability column p_<class> per class, found {columns}", column="p_")
    bad = ~frame["split"].isin(SPLITS).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            path, f"split {frame['split'].iloc[row]!r}; expected one of {SPLITS}", column="split", row=row + 2
        )
    values = frame[columns].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        row, col = np.argwhere(~np.isfinite(values))[0]
        raise DataError(path, "probability is NaN/inf", column=columns[col], row=int(row) + 2)
    duplicated = frame.duplicated(["feature_set", "split", "client_id"]).to_numpy()
    if duplicated.any():
        row = int(np.argmax(duplicated))
        raise DataError(
            path,
            f"client {frame['client_id'].iloc[row]!r} appears twice for feature set {frame['feature_set'].iloc[row]!r}",
            column="client_id",
            row=row + 2,
        )
    frame["client_id"] = frame["client_id"].astype(str)
    return frame
