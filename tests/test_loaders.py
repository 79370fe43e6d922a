"""Raw loaders (llm4trx.data.loaders): every schema read into the canonical events and targets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llm4trx.data import loaders, synthetic
from llm4trx.core.config import REPO_ROOT, compose
from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import DatasetSpec

CANONICAL = ["client_id", "event_time", "amount", "mcc"]


def load(out_root, *overrides):
    ds = DatasetSpec.from_config(compose([f"paths.output_root={out_root}", *overrides]).dataset)
    if ds.generator:
        synthetic.ensure_raw(ds)
    return ds, loaders.load(ds)


def check_canonical(ds, data):
    events = data.events
    assert list(events.columns) == CANONICAL + list(ds.categorical)
    assert events["event_time"].dtype == "datetime64[ns]" and events["amount"].dtype == np.float64
    assert events["mcc"].dtype == np.int32
    ids = events["client_id"].astype(str)
    keys = pd.DataFrame({"id": ids, "t": events["event_time"]})
    assert keys.equals(keys.sort_values(["id", "t"], kind="stable").reset_index(drop=True))
    assert set(data.targets["client_id"]) <= set(ids)
    assert data.targets["target"].between(0, ds.n_classes - 1).all()


def test_rosbank_schema(tmp_path):
    ds, data = load(tmp_path, "dataset.n_clients=200", "dataset.max_events=40")
    check_canonical(ds, data)
    train = pd.read_csv(f"{ds.raw_dir}/train.csv", dtype={"cl_id": str})
    test = pd.read_csv(f"{ds.raw_dir}/test.csv", dtype={"cl_id": str})
    assert len(data.events) == len(train) + len(test)
    expected = train.groupby("cl_id")["target_flag"].first()
    got = data.targets.set_index("client_id")["target"]
    assert got.sort_index().equals(expected.sort_index().rename("target").rename_axis("client_id"))
    assert not set(test["cl_id"]) & set(got.index)  # test.csv clients are unlabeled
    first = train.iloc[0]
    row = data.events[(data.events["client_id"] == first["cl_id"]) & (data.events["amount"] == first["amount"])].iloc[0]
    assert row["event_time"] == pd.to_datetime(first["TRDATETIME"], format="%d%b%y:%H:%M:%S")
    assert row["mcc"] == first["MCC"] and row["trx_category"] == first["trx_category"]
    assert (data.events["channel_type"] == "unknown").sum() == data.repairs["categorical_filled"] > 0


def test_age_pred_schema_counts_days_from_the_origin(tmp_path):
    ds, data = load(tmp_path, "dataset.schema=age_pred", "dataset.n_clients=200", "dataset.max_events=40")
    check_canonical(ds, data)
    raw = pd.read_csv(f"{ds.raw_dir}/transactions_train.csv")
    assert data.events["event_time"].min() == pd.Timestamp(ds.time_origin) + pd.Timedelta(
        days=int(raw["trans_date"].min())
    )
    assert (data.events["event_time"] == data.events["event_time"].dt.normalize()).all()
    assert set(data.targets["target"]) == {0, 1, 2, 3} and ds.mcc_names is None


def test_gender_schema_parses_day_and_time(tmp_path):
    ds, data = load(tmp_path, "dataset.schema=gender", "dataset.n_clients=200", "dataset.max_events=40")
    check_canonical(ds, data)
    raw = pd.read_csv(f"{ds.raw_dir}/transactions.csv", dtype={"customer_id": str}, nrows=1).iloc[0]
    day, clock = raw["tr_datetime"].split(" ")
    expected = pd.Timestamp(ds.time_origin) + pd.Timedelta(days=int(day)) + pd.Timedelta(clock)
    match = data.events[(data.events["client_id"] == raw["customer_id"]) & (data.events["event_time"] == expected)]
    assert (
        len(match) == 1 and match.iloc[0]["amount"] == raw["amount"] and match.iloc[0]["tr_type"] == str(raw["tr_type"])
    )


def test_real_age_pred_sample(tmp_path):
    ds, data = load(tmp_path, "dataset=age_pred_sample")
    assert str(REPO_ROOT) in ds.raw_dir
    check_canonical(ds, data)
    raw = pd.read_csv(f"{ds.raw_dir}/transactions_train.csv")
    target = pd.read_csv(f"{ds.raw_dir}/train_target.csv")
    assert len(data.events) == len(raw) == 1000 and data.events["client_id"].nunique() == 100
    assert len(data.targets) == 100
    merged = data.targets.astype({"client_id": int}).merge(target, on="client_id")
    assert (merged["target"] == merged["bins"]).all()
    assert np.isclose(data.events["amount"].sum(), raw["amount_rur"].sum())
    assert sum(data.repairs.values()) == 0


def write_custom(folder, time_values, target_in_file=False):
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user,ts,value,category,shop" + (",label" if target_in_file else "")]
    for i, ts in enumerate(time_values):
        user = f"u{i % 10:02d}"
        rows.append(f"{user},{ts},{10.5 + i},{5411 + i % 3},shop{i % 4}" + (f",{i % 10 % 2}" if target_in_file else ""))
    (folder / "tx.csv").write_text("\n".join(rows) + "\n")
    (folder / "labels.csv").write_text("user,label\n" + "".join(f"u{u:02d},{u % 2}\n" for u in range(10)))


def test_generic_loader_reads_own_data_by_column_mapping(tmp_path):
    times = [f"2021-03-{1 + i % 28:02d} 10:{i % 60:02d}:00" for i in range(60)]
    write_custom(tmp_path / "raw", times)
    overrides = [
        "dataset=custom",
        f"dataset.raw_dir={tmp_path / 'raw'}",
        "dataset.transactions=[tx.csv]",
        "dataset.id_column=user",
        "dataset.columns.time=ts",
        "dataset.columns.amount=value",
        "dataset.columns.mcc=category",
        "dataset.categorical=[shop]",
        "dataset.targets.file=labels.csv",
        "dataset.targets.column=label",
    ]
    ds, data = load(tmp_path / "out", *overrides)
    check_canonical(ds, data)
    assert len(data.events) == 60 and len(data.targets) == 10
    assert data.events["event_time"].min() == pd.Timestamp("2021-03-01 10:00:00")
    assert set(data.events["shop"]) == {"shop0", "shop1", "shop2", "shop3"}

    # The target as a column of the transactions file, and unix-seconds times.
    write_custom(tmp_path / "raw2", [1_600_000_000 + 3600 * i for i in range(60)], target_in_file=True)
    ds, data = load(
        tmp_path / "out",
        *overrides,
        f"dataset.raw_dir={tmp_path / 'raw2'}",
        "dataset.targets.file=null",
        "dataset.time_format=unix",
    )
    check_canonical(ds, data)
    assert data.events["event_time"].min() == pd.Timestamp(1_600_000_000, unit="s")
    assert dict(zip(data.targets["client_id"], data.targets["target"])) == {f"u{u:02d}": u % 2 for u in range(10)}


def test_custom_config_without_mandatory_fields_fails_clearly(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.raw_dir, .*dataset\.targets\.file"):
        load(tmp_path, "dataset=custom")
