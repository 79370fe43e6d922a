"""The synthetic dataset generator (llm4trx.data.synthetic): deterministic, reused, learnable signals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from llm4trx.data import loaders, synthetic
from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import DatasetSpec


def dataset_cfg(out_root, *overrides):
    return DatasetSpec.from_config(
        compose([f"paths.output_root={out_root}", "dataset.n_clients=300", "dataset.max_events=60", *overrides]).dataset
    )


@pytest.mark.parametrize("schema", ["rosbank", "age_pred", "gender"])
def test_same_parameters_give_identical_files_and_other_seeds_differ(tmp_path, schema):
    a = synthetic.ensure_raw(dataset_cfg(tmp_path / "a", f"dataset.schema={schema}"))
    b = synthetic.ensure_raw(dataset_cfg(tmp_path / "b", f"dataset.schema={schema}"))
    c = synthetic.ensure_raw(dataset_cfg(tmp_path / "c", f"dataset.schema={schema}", "dataset.seed=1"))
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and len(files) >= 3
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / files[-1]).read_bytes() != (c / files[-1]).read_bytes()


def test_existing_files_are_reused_and_regenerated_when_parameters_change(tmp_path):
    ds = dataset_cfg(tmp_path)
    raw = synthetic.ensure_raw(ds)
    stamp = (raw / "train.csv").stat().st_mtime_ns
    synthetic.ensure_raw(ds)
    assert (raw / "train.csv").stat().st_mtime_ns == stamp
    changed = dataset_cfg(tmp_path, "dataset.label_noise=0.3")
    assert changed.raw_dir == ds.raw_dir
    synthetic.ensure_raw(changed)
    assert (raw / "train.csv").stat().st_mtime_ns != stamp
    assert not [p for p in raw.parent.iterdir() if p.name.startswith(".")]


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.csv").write_text("precious\n")
    with pytest.raises(ConfigError, match="did not write"):
        synthetic.ensure_raw(dataset_cfg(tmp_path, f"dataset.raw_dir={tmp_path / 'mine'}"))
    assert (tmp_path / "mine" / "train.csv").read_text() == "precious\n"


def test_sizes_unlabeled_clients_and_classes(tmp_path):
    ds = dataset_cfg(tmp_path, "dataset.schema=age_pred", "dataset.min_events=10", "dataset.max_events=30")
    synthetic.ensure_raw(ds)
    data = loaders.load(ds)
    per_client = data.events.groupby("client_id", observed=True).size()
    assert len(per_client) == 300 and per_client.min() >= 10 and per_client.max() <= 30
    assert 0.1 < 1 - len(data.targets) / 300 < 0.3  # unlabeled_fraction 0.2
    assert set(data.targets["target"]) == {0, 1, 2, 3}


def features(events: pd.DataFrame) -> pd.DataFrame:
    """Per-category aggregates (shares, amount stats) and two sequence features the aggregates lack."""
    events = events.assign(log_amount=np.log(events["amount"].abs()))
    aggregates = pd.concat(
        [
            pd.crosstab(events["client_id"], events["mcc"], normalize="index").add_prefix("share_"),
            events.groupby("client_id", observed=True)["log_amount"].agg(["mean", "std"]),
        ],
        axis=1,
    )
    end = events["event_time"].max()
    following = events.groupby("client_id", observed=True)["mcc"].shift(-1)
    sequence = (
        events.assign(
            recent=events["event_time"] > end - pd.Timedelta(days=30),
            cash_then_transfer=(events["mcc"] == synthetic.CASH) & (following == synthetic.TRANSFER),
        )
        .groupby("client_id", observed=True)[["recent", "cash_then_transfer"]]
        .mean()
    )
    return aggregates.join(sequence)


def auroc(frame: pd.DataFrame, y: np.ndarray) -> float:
    x = (frame - frame.mean()) / (frame.std() + 1e-9)
    proba = cross_val_predict(LogisticRegression(max_iter=1000), x.to_numpy(), y, cv=5, method="predict_proba")[:, 1]
    return roc_auc_score(y, proba)


def test_signals_are_learnable_and_order_and_trend_are_invisible_to_aggregates(tmp_path):
    ds = dataset_cfg(tmp_path, "dataset.n_clients=1200", "dataset.unlabeled_fraction=0", "dataset.label_noise=0.05")
    synthetic.ensure_raw(ds)
    data = loaders.load(ds)
    x = features(data.events.astype({"client_id": str})).loc[data.targets["client_id"]]
    y = data.targets["target"].to_numpy()
    aggregate_cols = [c for c in x.columns if c not in ("recent", "cash_then_transfer")]
    aggregates, everything = auroc(x[aggregate_cols], y), auroc(x, y)
    assert aggregates > 0.72  # category mix and amounts (0.77 when written)
    assert everything > aggregates + 0.07  # trend and order add what aggregates cannot see (0.88)
    assert auroc(x[["recent"]], y) > 0.6 and auroc(x[["cash_then_transfer"]], y) > 0.6

    # With only the order signal switched on, per-category aggregates are at chance; the bigram is not.
    only_order = dataset_cfg(
        tmp_path / "o",
        "dataset.n_clients=1200",
        "dataset.unlabeled_fraction=0",
        "dataset.label_noise=0",
        "dataset.signals={mcc_mix: 0, amount: 0, trend: 0, order: 1}",
    )
    synthetic.ensure_raw(only_order)
    data = loaders.load(only_order)
    x = features(data.events.astype({"client_id": str})).loc[data.targets["client_id"]]
    y = data.targets["target"].to_numpy()
    assert auroc(x[aggregate_cols + ["recent"]], y) < 0.58
    assert auroc(x[["cash_then_transfer"]], y) > 0.8  # 0.89 when written


def test_hidden_factors_are_written_beside_the_raw_files_never_into_them(tmp_path):
    ds = dataset_cfg(tmp_path)
    raw = synthetic.ensure_raw(ds)
    factors = pd.read_csv(raw / synthetic.FACTORS)
    assert list(factors.columns) == ["cl_id", *[f"z_{k}" for k in synthetic.SIGNALS]]
    train = pd.read_csv(raw / "train.csv")
    assert not set(train.columns) & set(factors.columns[1:])  # the raw files carry no factor
    assert set(train["cl_id"]) <= set(factors["cl_id"]) and len(factors) == 300
    # raw files written before the factors existed get the factors file only; raw bytes unchanged
    before = {p.name: p.read_bytes() for p in raw.iterdir() if p.name != synthetic.FACTORS}
    written = (raw / synthetic.FACTORS).read_bytes()
    (raw / synthetic.FACTORS).unlink()
    synthetic.ensure_raw(ds)
    assert (raw / synthetic.FACTORS).read_bytes() == written
    assert {p.name: p.read_bytes() for p in raw.iterdir() if p.name != synthetic.FACTORS} == before
    # the factors explain the labels: a logistic regression on them beats 0.85 AUROC (label noise 0.1)
    labels = train.groupby("cl_id")["target_flag"].first()
    z = factors.set_index("cl_id").loc[labels.index]
    proba = cross_val_predict(LogisticRegression(), z, labels, cv=5, method="predict_proba")[:, 1]
    assert roc_auc_score(labels, proba) > 0.85
