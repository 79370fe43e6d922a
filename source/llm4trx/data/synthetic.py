"""Synthetic transactions written as raw files in a real schema, so the real loaders are what gets tested.

`dataset=synthetic` (the default) generates `dataset.n_clients` clients with `min_events..max_events`
transactions each over one year, seeded by `dataset.seed` (same parameters → byte-identical files), in the
schema `dataset.schema`:

- rosbank (default): train.csv (labeled, target_flag/target_sum per row) + test.csv (unlabeled clients);
- age_pred: transactions_train.csv + transactions_test.csv (unlabeled) + train_target.csv (4 bins);
- gender: transactions.csv (all clients) + gender_train.csv (labeled clients only).

Each client has four independent hidden factors z ~ N(0, 1). The label is a threshold on
`score = sum_k signals[k] * z_k` (binary: above the median; age_pred: quartile bins 0..3), then
`label_noise` of the labels are replaced by a different random class, and `unlabeled_fraction` of the
clients are written without a target. The factors show in the sequences as:

- `mcc_mix`: the share of "leisure" categories (restaurants, travel, clothing, ...) versus "daily" ones
  (groceries, fuel, pharmacy, ...) among regular purchases is sigmoid(z). Per-client random preferences
  within each group add nuisance. Visible to per-category aggregates (counts / shares per MCC).
- `amount`: log amounts = category baseline + 0.5 z + noise. Visible to aggregates (mean amount).
- `trend`: the share of a client's transactions in the last 30 days of the year is
  sigmoid(logit(30/365) + z): activity rising or falling recently. The total count and the per-category
  counts and amounts do not depend on it, so plain per-category aggregates cannot see it; a model reading
  dates (or time-windowed features) can.
- `order`: every client has the same share (10 %) of cash withdrawals (MCC 6011) and of money transfers
  (MCC 4829), in pairs with identically distributed amounts. With probability sigmoid(2 z) a pair's
  transfer comes minutes after its withdrawal (adjacent events); otherwise at an independent random time.
  Counts, amounts and times per category have the same distribution either way: only the order of events
  (how often "6011 then 4829" occurs) carries the signal.

Opt-in sequence signals (weight 0 by default; `dataset.signals.<kind>: 1.0` switches one on). Each has a
factor of its own (drawn from a separate random stream, so with all of them off the files are VERSION 1's,
byte for byte) and adds a fixed number of events per client whose counts, categories and amounts have the same
distribution whatever the factor: only order or timing carries it. "Sees it" below is by construction;
the grid (bench/signal_grid.py) measures what each model makes of it.

- `periodic`: 12 payments of MCC 4899 (a subscription: one amount per client, the same every time) per client.
  Each is on the client's monthly schedule (same day of month and hour, every 30.4 days) with probability
  sigmoid(2 z), otherwise on an independent random day. The schedule's start is uniform, so every payment's
  day is uniform over the year either way. Sees it: the gaps between the 4899 payments or their day of month
  (CoLES with time features; the LM through day-gap tokens, summed, or calendar tokens); aggregates: no;
  CoLES without time: barely (only how many other events fall between two payments).
- `regime`: 6 events of MCC 5732 (electronics) and 6 of MCC 5999 (misc. retail); a switch day per client
  (uniform in days 90..275); with probability sigmoid(2 z) the 5732 block is before the switch and the 5999
  block after it, otherwise the reverse. Pure order: sequence models see it with or without time (CoLES
  without time features too); aggregates: no.
- `burst`: 8 extra purchases (categories and amounts of the client's own regular ones) within 3 days; the burst
  starts in the last 14 days of the year with probability sigmoid(2 z), otherwise on a uniform earlier day.
  Pure timing (recency): the events are exchangeable with the client's others, so order alone shows nothing.
  Sees it: models reading dates or day gaps (CoLES with time, the LM's day-gap tokens: a run of `d0`/`d1` at
  the end); aggregates and CoLES without time: no.
- `gaps`: 4 sessions of 4 extra purchases (the client's own categories and amounts); each session is on one
  day within an hour (2 to 20 minutes apart) with probability sigmoid(2 z), otherwise its 4 events are at
  independent random times. Pure timing (inter-event gaps: same-day runs): sees it: models reading day gaps or
  times (CoLES with time, the LM's `d0@hh` tokens); aggregates and CoLES without time: no.

The factors themselves are written to `_FACTORS.csv` beside the raw files (one row per client, its id in
the schema's id column, z_mcc_mix z_amount z_trend z_order, then z_<kind> of each opt-in signal switched on),
never into them: the feature set `oracle` of llm4trx.validate, the ceiling every other feature set is placed
against.

Generation is numpy-vectorised (about a million transactions in a few seconds). Files are written into a
temporary folder renamed to `dataset.raw_dir`, with `_GENERATED.json` holding the parameters; an existing
folder generated with the same parameters is reused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import DatasetSpec
from llm4trx.core.stage import atomic_dir

log = logging.getLogger(__name__)

MARKER = "_GENERATED.json"
# The clients' hidden factors, beside (never inside) the raw files: the ceiling feature set `oracle`.
FACTORS = "_FACTORS.csv"
# Generator version: bump when the generated data changes for the same parameters.
VERSION = 1

# (MCC, typical amount) of the regular purchases; group A ("leisure") vs group B ("daily").
LEISURE = [
    (5812, 1500),
    (5814, 400),
    (5813, 900),
    (7832, 600),
    (4722, 15000),
    (4511, 12000),
    (7011, 6000),
    (5651, 3500),
    (5977, 1200),
    (5942, 800),
]
DAILY = [
    (5411, 700),
    (5912, 500),
    (5541, 1800),
    (4900, 2500),
    (4814, 400),
    (5200, 2000),
    (4111, 60),
    (4121, 350),
    (5310, 450),
    (5533, 1600),
]
CASH, TRANSFER = 6011, 4829
CATALOG = np.array([m for m, _ in LEISURE + DAILY] + [CASH, TRANSFER], dtype=np.int64)
TYPICAL = np.array([a for _, a in LEISURE + DAILY] + [5000, 5000], dtype=np.float64)
PAIR_SHARE = 0.1
YEAR_DAYS, RECENT_DAYS = 365, 30
END = {"rosbank": "2017-10-31", "age_pred": None, "gender": None}
SIGNALS = ("mcc_mix", "amount", "trend", "order")
# Opt-in sequence signals (weight 0 unless set): order/timing only, see the module docstring.
EXTRA_SIGNALS = ("periodic", "regime", "burst", "gaps")
# Their own categories, appended to the catalog (indices 22..24; unused while they are off).
SUBSCRIPTION, REGIME_FIRST, REGIME_SECOND = 4899, 5732, 5999
EXTRA_CATALOG = [(SUBSCRIPTION, 800), (REGIME_FIRST, 3000), (REGIME_SECOND, 1500)]
CATALOG = np.concatenate([CATALOG, [m for m, _ in EXTRA_CATALOG]])
TYPICAL = np.concatenate([TYPICAL, [a for _, a in EXTRA_CATALOG]])
SCHEMAS = ("rosbank", "age_pred", "gender")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def params_of(ds: DatasetSpec) -> dict:
    weights = dict(ds.signals or {})  # known names only: core/schema.py
    # The opt-in kinds enter the parameters only when on, so _GENERATED.json stays VERSION 1's when off.
    extra = {k: float(weights[k]) for k in EXTRA_SIGNALS if float(weights.get(k) or 0.0) != 0.0}
    return {
        "version": VERSION,
        "schema": ds.schema,
        "n_clients": int(ds.n_clients),
        "seed": int(ds.seed),
        "min_events": int(ds.min_events),
        "max_events": int(ds.max_events),
        "label_noise": float(ds.label_noise),
        "unlabeled_fraction": float(ds.unlabeled_fraction),
        "signals": {**{k: float(weights.get(k, 1.0)) for k in SIGNALS}, **extra},
    }


def generate(p: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events (client, day offset in seconds, mcc index, amount) sorted by client and time, and clients."""
    # dataset.schema, n_clients >= 10 and min_events >= 2: core/schema.py
    if p["min_events"] > p["max_events"]:
        raise ConfigError(f"dataset.min_events={p['min_events']} exceeds dataset.max_events={p['max_events']}")
    rng = np.random.default_rng(p["seed"])
    n = p["n_clients"]
    z = rng.standard_normal((n, len(SIGNALS)))
    score = z @ np.array([p["signals"][k] for k in SIGNALS])
    extra = [k for k in EXTRA_SIGNALS if p["signals"].get(k, 0.0)]
    if extra:  # a stream of their own: the base factors and events stay those of the same seed without them
        z_extra = np.random.default_rng([p["seed"], 2]).standard_normal((n, len(EXTRA_SIGNALS)))
        score = score + z_extra @ np.array([p["signals"].get(k, 0.0) for k in EXTRA_SIGNALS])
    n_classes = 4 if p["schema"] == "age_pred" else 2
    label = np.searchsorted(np.quantile(score, np.arange(1, n_classes) / n_classes), score).astype(np.int64)
    noisy = rng.random(n) < p["label_noise"]
    label[noisy] = (label[noisy] + rng.integers(1, n_classes, noisy.sum())) % n_classes
    labeled = rng.random(n) >= p["unlabeled_fraction"]
    z_mix, z_amount, z_trend, z_order = z.T

    n_events = rng.integers(p["min_events"], p["max_events"] + 1, n)
    n_pairs = (n_events * PAIR_SHARE).astype(np.int64)
    n_regular = n_events - 2 * n_pairs

    # Regular purchases: group share sigmoid(z_mix), Dirichlet preferences inside each group.
    k_a, k_b = len(LEISURE), len(DAILY)
    share_a = sigmoid(z_mix)
    prefs = np.hstack(
        [rng.dirichlet(np.ones(k_a), n) * share_a[:, None], rng.dirichlet(np.ones(k_b), n) * (1 - share_a)[:, None]]
    )
    reg_client = np.repeat(np.arange(n), n_regular)
    # Inverse-CDF sampling for all clients at once: client c's cumulative probabilities shifted by c are
    # globally increasing, so one searchsorted finds every event's category.
    cum = (np.cumsum(prefs, axis=1) + np.arange(n)[:, None]).ravel()
    cum[np.arange(1, n + 1) * (k_a + k_b) - 1] = np.arange(1, n + 1) - 1e-12  # guard rounding at each row's end
    reg_mcc = np.searchsorted(cum, reg_client + rng.random(len(reg_client)), side="right") - reg_client * (k_a + k_b)
    reg_mcc = np.minimum(reg_mcc, k_a + k_b - 1)

    # Pairs: a cash withdrawal and a transfer; adjacent with probability sigmoid(2 z_order).
    pair_client = np.repeat(np.arange(n), n_pairs)
    adjacent = rng.random(len(pair_client)) < sigmoid(2 * z_order[pair_client])

    recent_share = sigmoid(np.log(RECENT_DAYS / (YEAR_DAYS - RECENT_DAYS)) + z_trend)

    def times(clients):
        recent = rng.random(len(clients)) < recent_share[clients]
        start = np.where(recent, YEAR_DAYS - RECENT_DAYS, 0)
        length = np.where(recent, RECENT_DAYS, YEAR_DAYS - RECENT_DAYS)
        # Seconds from the start of the year; daytime only (08:00-22:00) so same-day order is meaningful.
        day = start + (rng.random(len(clients)) * length).astype(np.int64)
        return day * 86400 + 8 * 3600 + rng.integers(0, 14 * 3600 - 3600, len(clients))

    reg_time = times(reg_client)
    cash_time = times(pair_client)
    transfer_time = np.where(adjacent, cash_time + rng.integers(60, 900, len(pair_client)), times(pair_client))

    client = np.concatenate([reg_client, pair_client, pair_client])
    mcc = np.concatenate([reg_mcc, np.full(len(pair_client), k_a + k_b), np.full(len(pair_client), k_a + k_b + 1)])
    seconds = np.concatenate([reg_time, cash_time, transfer_time])
    log_amount = np.log(TYPICAL[mcc]) + 0.5 * z_amount[client] + 0.8 * rng.standard_normal(len(client))
    log_amount[len(reg_client) :] = np.log(5000) + 0.8 * rng.standard_normal(2 * len(pair_client))
    amount = np.round(np.exp(log_amount), 2)
    if extra:
        base = {"n": n, "prefs": prefs, "z_amount": z_amount}
        parts = [
            PLANTERS[k](
                np.random.default_rng([p["seed"], 3, EXTRA_SIGNALS.index(k)]), z_extra[:, EXTRA_SIGNALS.index(k)], base
            )
            for k in extra
        ]
        client, seconds, mcc, amount = (
            np.concatenate([a, *(part[j] for part in parts)]) for j, a in enumerate((client, seconds, mcc, amount))
        )
    order = np.lexsort((seconds, client))
    events = pd.DataFrame(
        {"client": client[order], "seconds": seconds[order], "mcc": mcc[order], "amount": amount[order]}
    )
    clients = pd.DataFrame(
        {
            "id": rng.permutation(n) + (10_000 if p["schema"] == "gender" else 0),
            "label": label,
            "labeled": labeled,
            **{f"z_{k}": z[:, j] for j, k in enumerate(SIGNALS)},  # for FACTORS only
            **{f"z_{k}": z_extra[:, EXTRA_SIGNALS.index(k)] for k in extra},
        }
    )
    return events, clients


# ------------------------------------------------------------------------ opt-in sequence signals
# Each planter gets its own random stream, the client's factor z of its kind, and the base draws it may
# reuse (prefs: the regular category mix; z_amount); it returns (client, seconds, mcc index, amount) of the
# events it adds. Counts, categories and amounts never depend on z: only when the events happen does.

DAY_START, DAY_LENGTH = 8 * 3600, 13 * 3600  # daytime 08:00-21:00, as the base events


def _random_times(rng, size) -> np.ndarray:
    return rng.integers(0, YEAR_DAYS, size) * 86400 + DAY_START + rng.integers(0, DAY_LENGTH, size)


def _regular_purchases(rng, clients, base) -> tuple[np.ndarray, np.ndarray]:
    """Categories from each client's regular mix and amounts as the base model draws them: exchangeable
    with the client's other regular purchases."""
    prefs = base["prefs"][clients]
    mcc = (prefs.cumsum(1) < rng.random(len(clients))[:, None]).sum(1)
    mcc = np.minimum(mcc, prefs.shape[1] - 1)
    log_amount = np.log(TYPICAL[mcc]) + 0.5 * base["z_amount"][clients] + 0.8 * rng.standard_normal(len(clients))
    return mcc, np.round(np.exp(log_amount), 2)


def plant_periodic(rng, z, base):
    n, k = base["n"], 12
    clients = np.repeat(np.arange(n), k)
    start = rng.integers(0, 30, n)[clients]  # the schedule's first day: every payment's day uniform over the year
    hour = rng.integers(0, DAY_LENGTH // 3600, n)[clients]
    regular = rng.random(len(clients)) < sigmoid(2 * z[clients])
    scheduled = (
        (start + np.tile(np.arange(k) * YEAR_DAYS / k, n)).astype(np.int64) * 86400
        + DAY_START
        + hour * 3600
        + rng.integers(0, 600, len(clients))
    )
    seconds = np.where(regular, scheduled, _random_times(rng, len(clients)))
    amount = np.round(np.exp(np.log(800) + 0.6 * rng.standard_normal(n)), 2)[clients]
    return clients, seconds, np.full(len(clients), CATALOG.tolist().index(SUBSCRIPTION)), amount


def plant_regime(rng, z, base):
    n, k = base["n"], 6
    clients = np.repeat(np.arange(n), 2 * k)
    switch = rng.integers(90, 276, n)[clients]
    second = np.tile(np.repeat([False, True], k), n)  # the first k events of a client are REGIME_FIRST's
    first_then_second = (rng.random(n) < sigmoid(2 * z))[clients]
    late = second == first_then_second  # REGIME_FIRST early and REGIME_SECOND late, or the reverse
    u = rng.random(len(clients))
    day = np.where(late, switch + u * (YEAR_DAYS - switch), u * switch).astype(np.int64)
    seconds = day * 86400 + DAY_START + rng.integers(0, DAY_LENGTH, len(clients))
    mcc = np.where(second, CATALOG.tolist().index(REGIME_SECOND), CATALOG.tolist().index(REGIME_FIRST))
    amount = np.round(np.exp(np.log(TYPICAL[mcc]) + 0.8 * rng.standard_normal(len(clients))), 2)
    return clients, seconds, mcc, amount


def plant_burst(rng, z, base):
    n, k, recent, width = base["n"], 8, 14, 3
    clients = np.repeat(np.arange(n), k)
    late = rng.random(n) < sigmoid(2 * z)
    first = np.where(
        late,
        rng.integers(YEAR_DAYS - recent, YEAR_DAYS - width + 1, n),
        rng.integers(0, YEAR_DAYS - recent - width + 1, n),
    )
    seconds = (
        (first[clients] + rng.integers(0, width, len(clients))) * 86400
        + DAY_START
        + rng.integers(0, DAY_LENGTH, len(clients))
    )
    mcc, amount = _regular_purchases(rng, clients, base)
    return clients, seconds, mcc, amount


def plant_gaps(rng, z, base):
    n, sessions, k = base["n"], 4, 4
    session = np.repeat(np.arange(n * sessions), k)
    clients = session // sessions
    together = (rng.random(n * sessions) < sigmoid(2 * z[np.arange(n * sessions) // sessions]))[session]
    # a session starts by 20:00 so its hour ends by 21:00, as the base events
    start = (
        rng.integers(0, YEAR_DAYS, n * sessions) * 86400 + DAY_START + rng.integers(0, DAY_LENGTH - 3600, n * sessions)
    )[session]
    steps = rng.integers(120, 1200, len(clients))
    steps[np.arange(0, len(clients), k)] = 0
    within = np.cumsum(steps.reshape(-1, k), axis=1).ravel()
    seconds = np.where(together, start + within, _random_times(rng, len(clients)))
    mcc, amount = _regular_purchases(rng, clients, base)
    return clients, seconds, mcc, amount


PLANTERS = {"periodic": plant_periodic, "regime": plant_regime, "burst": plant_burst, "gaps": plant_gaps}


def write_raw(p: dict, out: Path) -> None:
    from llm4trx.data.synthetic_raw import WRITERS, write_factors  # here: that module reads this one's constants

    events, clients = generate(p)
    WRITERS[p["schema"]](events, clients, np.random.default_rng([p["seed"], 1]), out)
    write_factors(clients, p["schema"], out / FACTORS)


def ensure_raw(ds: DatasetSpec) -> Path:
    """Generate the raw files into ds.raw_dir unless they are there already with the same parameters."""
    raw_dir = Path(ds.raw_dir)
    p = params_of(ds)
    marker = raw_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == p:
        if not (raw_dir / FACTORS).is_file():  # generated before the factors were written: add them only
            from llm4trx.data.synthetic_raw import write_factors

            tmp = raw_dir / f".{FACTORS}.tmp{os.getpid()}"
            write_factors(generate(p)[1], p["schema"], tmp)
            tmp.replace(raw_dir / FACTORS)  # atomic: a reader sees no file or the whole file
        return raw_dir
    if raw_dir.exists() and any(raw_dir.iterdir()) and not marker.is_file():
        raise ConfigError(
            f"{raw_dir} holds files the synthetic generator did not write; choose another dataset.raw_dir"
        )
    with atomic_dir(raw_dir) as tmp:
        write_raw(p, tmp)
        (tmp / MARKER).write_text(json.dumps(p, indent=2) + "\n")
    log.info("synthetic: wrote %s clients in the %s schema to %s", p["n_clients"], p["schema"], raw_dir)
    return raw_dir
