"""Canonical data/ folders (the `prepare` contract) written directly, for tests of the stages after it."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from llm4trx.core.stage import stage_dir, write_success

# Each benchmark schema's canonical columns come from the product's own dataset config (conf/dataset/synthetic.yaml
# describes every schema the loaders know); the tests only choose the schema.
SCHEMAS = {schema: [f"dataset.schema={schema}"] for schema in ("rosbank", "age_pred", "gender")}
MCCS = np.array([5411, 5812, 5912, 6011, 4829, 5541, 5999, 7995, 4111, 5691])


def canonical_events(
    schema: str, n_clients: int = 40, seed: int = 0, min_events: int = 5, max_events: int = 120
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(min_events, max_events + 1, n_clients)
    n = int(sizes.sum())
    client = np.repeat([f"c{i:05d}" for i in range(n_clients)], sizes)
    start = np.repeat(rng.integers(0, 200, n_clients), sizes)
    day = start + np.concatenate([np.sort(rng.integers(0, 300, k)) for k in sizes])
    time_of_day = rng.integers(0, 86400, n) if schema == "gender" else np.zeros(n, int)
    event_time = pd.Timestamp("2017-01-01") + pd.to_timedelta(day * 86400 + time_of_day, unit="s")
    amount = np.round(np.exp(rng.normal(6, 1.5, n)), 2)
    if schema == "gender":
        amount = np.where(rng.random(n) < 0.8, -amount, amount)
    mcc = MCCS[rng.integers(0, len(MCCS), n)] if schema != "age_pred" else rng.integers(0, 200, n)
    events = pd.DataFrame(
        {"client_id": client, "event_time": event_time, "amount": amount, "mcc": mcc.astype(np.int32)}
    )
    if schema == "rosbank":
        events["channel_type"] = pd.Series(rng.choice(["type1", "type2", None], n, p=[0.7, 0.2, 0.1]), dtype="string")
        events["currency"] = pd.Series(rng.choice(["810", "978", "840"], n, p=[0.9, 0.05, 0.05]), dtype="string")
        events["trx_category"] = pd.Series(rng.choice(["POS", "DEPOSIT", "C2C_OUT", "WD_ATM_ROS"], n), dtype="string")
    elif schema == "gender":  # hostile characters for the formats' quoting
        events["tr_type"] = pd.Series(rng.choice(["1010", "1030", "A1|x", 'B"2', None], n), dtype="string")
    return events.sort_values(["client_id", "event_time"], kind="stable").reset_index(drop=True)


def write_canonical(
    cfg, events: pd.DataFrame, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0
) -> None:
    """data/{events,targets,splits}.parquet and _SUCCESS.json for the run described by cfg."""
    folder = stage_dir(cfg, "prepare")
    folder.mkdir(parents=True, exist_ok=True)
    clients = np.array(sorted(events["client_id"].unique()))
    rng = np.random.default_rng(seed)
    draw = rng.random(len(clients))
    split = np.where(draw < test_fraction, "test", np.where(draw < test_fraction + val_fraction, "val", "train"))
    splits = pd.DataFrame({"client_id": clients, "split": split, "fold": np.int8(-1), "labeled": True})
    events.to_parquet(folder / "events.parquet", index=False)
    pd.DataFrame({"client_id": clients, "target": rng.integers(0, 2, len(clients))}).to_parquet(
        folder / "targets.parquet", index=False
    )
    splits.to_parquet(folder / "splits.parquet", index=False)
    write_success(folder, f"fixture-{seed}-{len(events)}", time.time(), {"events": len(events)})


def canonical_run(out_root, schema: str = "rosbank", overrides=(), n_clients: int = 40, seed: int = 0, **kw):
    """Composed config for a run under out_root whose data/ holds canonical events of `schema`."""
    from llm4trx.core.config import compose

    cfg = compose([f"paths.output_root={out_root}", "progress=false", *SCHEMAS[schema], *overrides])
    events = kw.pop("events", None)
    write_canonical(cfg, canonical_events(schema, n_clients, seed, **kw) if events is None else events, seed=seed)
    return cfg
