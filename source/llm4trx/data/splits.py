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
"""

from __future__ import annotations

import random

from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from llm4trx.core.errors import ConfigError

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


def make_splits(client_ids, targets: "pd.DataFrame", cfg: DictConfig) -> "pd.DataFrame":
    """client_id, split, fold (int8), labeled (bool) for every client in `client_ids` (natural order).

    `targets` holds client_id, target of the labeled clients (all of them must be in `client_ids`).
    """
    # Imported here: every stage imports this module for SPLITS, and sklearn + pandas cost seconds at start.
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    # test_fraction and val_fraction in [0, 1), n_folds >= 2: core/schema.py
    clients = natural_sorted(client_ids)
    target_of = dict(zip(targets["client_id"].astype(str), targets["target"]))
    test = set(ptls_test_ids(target_of, cfg.test_fraction, cfg.random_state))

    fold_of: dict[str, int] = {}
    cv_ids = [c for c in natural_sorted(target_of) if c not in test]
    if cv_ids:
        y = np.array([target_of[c] for c in cv_ids])
        smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
        if smallest < cfg.n_folds:
            raise ConfigError(
                f"splits.n_folds={cfg.n_folds} needs at least that many labeled non-test clients per class "
                f"(smallest class has {smallest}); use fewer folds or more clients"
            )
        folds = StratifiedKFold(int(cfg.n_folds), shuffle=True, random_state=int(cfg.random_state))
        for fold, (_, held_out) in enumerate(folds.split(np.zeros(len(y)), y)):
            fold_of.update((cv_ids[i], fold) for i in held_out)

    pretrain = [c for c in clients if c not in test]
    n_val = int(round(len(pretrain) * cfg.val_fraction))
    if cfg.val_fraction > 0 and len(pretrain) > 1:
        n_val = min(max(n_val, 1), len(pretrain) - 1)
    perm = np.random.default_rng(int(cfg.random_state)).permutation(len(pretrain))
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
