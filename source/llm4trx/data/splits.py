"""The pytorch-lifestream split protocol (ptls-experiments' `split_dataset`, embeddings_validation's folds).

1. Labeled clients = ids in the targets that also have transactions, sorted in their natural order (ptls
   sorts the ids as read: integers numerically, so all-integer ids are sorted as integers here, other ids
   as strings), shuffled with `random.Random(random_state)`.
2. `n_test = int(n_labeled * test_fraction)`; the LAST n_test of the shuffled list are `test`
   (ptls: `s_clients[-Nrows_test:]`). ptls' slicing gives no train clients when n_test is 0; here n_test = 0
   simply means no test clients.
3. The remaining labeled clients, in natural order, get folds from
   `StratifiedKFold(n_folds, shuffle=True, random_state)` (the fold a client is held out in).
4. Pretraining splits: test clients are never in pretraining. Of the non-test clients (labeled and
   unlabeled), `val_fraction` form `val` (pretraining eval loss), chosen by a seeded permutation of the
   natural-sorted ids; the rest are `train`. Unlabeled clients are train/val only, with fold -1.

This module also owns the prepare stage's data/splits.parquet and data/targets.parquet: their writers, their
readers and the labeled clients of the protocol (`load_labels`, read by validate, baselines and finetune).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llm4trx.core import registry
from llm4trx.core.errors import ConfigError, DataError
from llm4trx.core.sections import SplitsSpec

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "val", "test")  # every client is in exactly one (test: labeled, never in pretraining)
PRETRAIN_SPLITS = ("train", "val")  # the pretraining corpus: shards and the eval loss


def natural_sorted(ids) -> list[str]:
    """Ids sorted as ptls sorts them: numerically when every id is an integer, else as strings."""
    ids = [str(i) for i in ids]
    if ids and all(i.lstrip("-").isdigit() for i in ids):
        return sorted(ids, key=lambda i: (int(i), i))
    return sorted(ids)


def ptls_test_ids(labeled_ids, test_fraction: float, random_state: int) -> list[str]:
    clients = natural_sorted(set(labeled_ids))
    random.Random(random_state).shuffle(clients)
    n_test = int(len(clients) * test_fraction)
    return clients[-n_test:] if n_test > 0 else []


def make_splits(client_ids, targets: "pd.DataFrame", spec: SplitsSpec) -> "pd.DataFrame":
    """client_id, split, fold (int8), labeled (bool) for every client in `client_ids` (natural order).

    `targets` holds client_id, target of the labeled clients (all of them must be in `client_ids`).
    """
    # Imported here: every stage imports this module for SPLITS, and sklearn + pandas cost seconds at start.
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    # test_fraction and val_fraction in [0, 1), n_folds >= 2: core/schema.py
    clients = natural_sorted(client_ids)
    target_of = dict(zip(targets["client_id"].astype(str), targets["target"]))
    test = set(ptls_test_ids(target_of, spec.test_fraction, spec.random_state))

    fold_of: dict[str, int] = {}
    cv_ids = [c for c in natural_sorted(target_of) if c not in test]
    if cv_ids:
        y = np.array([target_of[c] for c in cv_ids])
        smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
        if smallest < spec.n_folds:
            raise ConfigError(
                f"splits.n_folds={spec.n_folds} needs at least that many labeled non-test clients per class "
                f"(smallest class has {smallest}); use fewer folds or more clients"
            )
        folds = StratifiedKFold(int(spec.n_folds), shuffle=True, random_state=int(spec.random_state))
        for fold, (_, held_out) in enumerate(folds.split(np.zeros(len(y)), y)):
            fold_of.update((cv_ids[i], fold) for i in held_out)

    pretrain = [c for c in clients if c not in test]
    n_val = int(round(len(pretrain) * spec.val_fraction))
    if spec.val_fraction > 0 and len(pretrain) > 1:
        n_val = min(max(n_val, 1), len(pretrain) - 1)
    perm = np.random.default_rng(int(spec.random_state)).permutation(len(pretrain))
    val = {pretrain[i] for i in perm[:n_val]}

    split = ["test" if c in test else "val" if c in val else "train" for c in clients]
    return pd.DataFrame(
        {
            "client_id": pd.Series(clients, dtype=object),
            "split": split,
            "fold": np.array([fold_of.get(c, -1) for c in clients], dtype=np.int8),
            "labeled": np.array([c in target_of for c in clients], dtype=bool),
        }
    )


# ------------------------------------------------------------------------------------------ the files

SPLITS_SCHEMA = (("client_id", "string"), ("split", "string"), ("fold", "int8"), ("labeled", "bool"))
TARGETS_SCHEMA = (("client_id", "string"), ("target", "int64"))


def splits_path(data_dir: Path) -> Path:
    return Path(data_dir) / registry.file("prepare", "splits")


def targets_path(data_dir: Path) -> Path:
    return Path(data_dir) / registry.file("prepare", "targets")


def _write(frame: "pd.DataFrame", schema, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.schema([(name, getattr(pa, kind)() if kind != "bool" else pa.bool_()) for name, kind in schema])
    pq.write_table(pa.Table.from_pandas(frame, schema=arrow, preserve_index=False), path)


def write_splits(data_dir: Path, splits: "pd.DataFrame") -> None:
    _write(splits, SPLITS_SCHEMA, splits_path(data_dir))


def write_targets(data_dir: Path, targets: "pd.DataFrame") -> None:
    _write(targets, TARGETS_SCHEMA, targets_path(data_dir))


def _read(path: Path, columns) -> "pd.DataFrame":
    import pandas as pd

    if not path.is_file():
        raise DataError(path, "missing (written by the prepare stage)")
    frame = pd.read_parquet(path)
    for column in columns:
        if column not in frame.columns:
            raise DataError(path, "column missing", column=column)
    return frame


def read_splits(data_dir: Path, columns: tuple[str, ...] | None = None) -> "pd.DataFrame":
    """data/splits.parquet (client_id, split, fold, labeled), or only `columns` of it."""
    frame = _read(splits_path(data_dir), columns or [name for name, _ in SPLITS_SCHEMA])
    return frame if columns is None else frame[list(columns)]


def read_targets(data_dir: Path) -> "pd.DataFrame":
    return _read(targets_path(data_dir), [name for name, _ in TARGETS_SCHEMA])


# ------------------------------------------------------------------------------------------ labeled clients


@dataclass
class Labels:
    """Labeled clients of the protocol: the cross-validated part (with folds) and the fixed test part,
    each in natural id order (the order models are trained and scored in). `test_y` is None when the test
    labels were not read (fine-tuning never sees them)."""

    train_ids: np.ndarray
    train_y: np.ndarray
    folds: np.ndarray
    test_ids: np.ndarray
    test_y: np.ndarray | None


def load_labels(
    data_dir: Path,
    n_folds: int,
    *,
    test_labels: bool = True,
    n_classes: int | None = None,
    fix: str | None = None,
    held_out: str = "validation",
) -> Labels:
    """The labeled clients of data/ under the protocol, with every check of the files in one place.

    `test_labels=False`: the test clients' targets are not read (only their ids); `n_classes`: the targets must
    lie in [0, n_classes); `fix`: what the user can do when a part of a fold has one class only; `held_out`:
    what the message calls a fold's held-out part.
    """
    data_dir = Path(data_dir)
    s_path, t_path = splits_path(data_dir), targets_path(data_dir)
    targets, splits = read_targets(data_dir), read_splits(data_dir)
    labeled = splits[splits["labeled"]]
    if not test_labels:  # only the cross-validated clients' targets are joined
        targets = targets[
            targets["client_id"].astype(str).isin(set(labeled.loc[labeled["split"] != "test", "client_id"].astype(str)))
        ]
    if targets["target"].isna().any():
        row = int(np.argmax(targets["target"].isna().to_numpy()))
        raise DataError(t_path, "missing target", column="target", row=row + 2)
    labeled = labeled.merge(targets, on="client_id", how="left", validate="one_to_one")
    missing = labeled["target"].isna() & ((labeled["split"] != "test") | test_labels)
    if missing.any():
        cid = labeled.loc[missing, "client_id"].iloc[0]
        raise DataError(t_path, f"client {cid!r} is labeled in {s_path.name} but has no target", column="client_id")
    # The protocol's row order: natural id order, as the folds were assigned (see the module docstring).
    position = {cid: i for i, cid in enumerate(natural_sorted(labeled["client_id"]))}
    labeled = labeled.iloc[np.argsort([position[str(cid)] for cid in labeled["client_id"]], kind="stable")]
    test = labeled[labeled["split"] == "test"]
    train = labeled[labeled["split"] != "test"]
    if len(train) < n_folds:
        raise DataError(s_path, f"{len(train)} labeled non-test clients, fewer than the {n_folds} folds", column="fold")
    if train["target"].nunique() < 2:
        raise DataError(
            t_path,
            f"the labeled non-test clients have one class only ({train['target'].iloc[0]!r}); a classifier needs two",
            column="target",
        )
    if n_classes is not None:
        y = train["target"].to_numpy().astype(np.int64)
        bad = (y < 0) | (y >= n_classes)
        if bad.any():
            found = sorted(int(v) for v in np.unique(y))
            raise DataError(
                t_path,
                f"targets take values {found}, outside [0, {n_classes}) for dataset.n_classes="
                f"{n_classes} (client {train['client_id'].iloc[int(np.argmax(bad))]!r}); fix the data or "
                "dataset.n_classes",
                column="target",
            )
    found = sorted(int(f) for f in train["fold"].unique())
    if found != list(range(n_folds)):
        raise DataError(
            s_path, f"labeled non-test clients carry folds {found}, expected 0..{n_folds - 1}", column="fold"
        )
    if len(test) == 0:
        raise DataError(s_path, "no labeled test clients", column="split")
    y, folds = train["target"].to_numpy(), train["fold"].to_numpy()
    fix = fix or (
        f"the metrics need two classes in every part: label more clients (at least {n_folds} of each class "
        f"among the non-test ones) or use fewer folds (splits.n_folds), then rerun prepare"
    )
    for fold in found:
        for part, rows in ((held_out, folds == fold), ("training", folds != fold)):
            classes = np.unique(y[rows])
            if len(classes) < 2:
                raise DataError(
                    t_path,
                    f"fold {fold}: its {part} part ({int(rows.sum())} clients) has one "
                    f"class only ({classes[0].item()!r}); {fix}",
                    column="target",
                )
    if test_labels and test["target"].nunique() < 2:
        raise DataError(
            t_path,
            f"the {len(test)} test clients have one class only ({test['target'].to_numpy()[0].item()!r}); {fix}",
            column="target",
        )
    return Labels(
        train["client_id"].to_numpy(),
        train["target"].to_numpy(),
        train["fold"].to_numpy(),
        test["client_id"].to_numpy(),
        test["target"].to_numpy() if test_labels else None,
    )
