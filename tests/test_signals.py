"""The synthetic generator's opt-in sequence signals (periodic, regime, burst, gaps): off they change nothing,
on they are planted in every schema, seen by a hand-made feature of their kind and not by aggregates."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import DatasetSpec
from llm4trx.data import loaders, synthetic
from llm4trx.evaluation.features import oracle_features

# sha256 of every file the default generator writes (n_clients=200, max_events=40, seed 0), computed with
# main d7fc98a's generator before the opt-in signals existed: with them off, the output is VERSION 1's.
REFERENCE_SHA256 = {
    "rosbank": {
        "_FACTORS.csv": "5114bc5665b19bb995383a69869faee15693f65ed8e34ac01fbe690acb19f436",
        "_GENERATED.json": "51cd4dc7ccc8b3b2f062b83aa2f6af7a376f182be576e1b16f9d513657b01b61",
        "test.csv": "d64e4f7d5da329f9e95cf4b548ba8ce655e4524f6533fa50ac59608afb0d815c",
        "train.csv": "d2842f4bf4bbfaf0d0e02804ac004c0c96f1caec3f162b06434d31098c00cb58",
    },
    "age_pred": {
        "_FACTORS.csv": "203ebf37918c75c818ec33be17ddbadaacad33abfa7a62a8436c036c68a5b2c4",
        "_GENERATED.json": "642a25f70720881d1dad041819aa6dd789e4f09242961af800eca454ecca5f8d",
        "train_target.csv": "0af32fd0ad326b1740de94c917a99ac635f78159ab47153b7ad59114306eb921",
        "transactions_test.csv": "a5ffe2a69560132c1f62e603400ab09166fb1308f9358deb96c27663b26286a6",
        "transactions_train.csv": "97f784c3a692002d4bcdecbd885ae11d7d3b22fddbe4882601b3591de2561b47",
    },
    "gender": {
        "_FACTORS.csv": "e780c9a3f4f92434d4794579d09ce559ddaa90be16a65a7e3ca908b8c4e3f2e6",
        "_GENERATED.json": "8a1c10b2dafde55c21d2f753fdd2fc01ea68649b0dc4db494479f701ab9a5258",
        "gender_train.csv": "3b772a1af4075a471ee02dd0a754a81f2fcfd3c79c9b329f453b9b04de72273d",
        "transactions.csv": "6d26377ea7f851886cbeaaa8a24549ff8611a01b786df4ff2f631a3b06bfeaff",
    },
}


def dataset_cfg(out_root, *overrides):
    return DatasetSpec.from_config(compose([f"paths.output_root={out_root}", *overrides]).dataset)


def sha256s(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("schema", synthetic.SCHEMAS)
def test_signals_off_write_the_files_of_version_1_byte_for_byte(tmp_path, schema):
    small = [f"dataset.schema={schema}", "dataset.n_clients=200", "dataset.max_events=40"]
    raw = synthetic.ensure_raw(dataset_cfg(tmp_path / "a", *small))
    assert sha256s(raw) == REFERENCE_SHA256[schema]
    # the opt-in weights written out at 0 are the same parameters, the same files
    zeros = [f"dataset.signals.{k}=0" for k in synthetic.EXTRA_SIGNALS]
    assert sha256s(synthetic.ensure_raw(dataset_cfg(tmp_path / "b", *small, *zeros))) == REFERENCE_SHA256[schema]


def test_a_misspelt_signal_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.signals\.periodc: unknown key; known: .*periodic"):
        synthetic.ensure_raw(dataset_cfg(tmp_path, "+dataset.signals.periodc=1", "dataset.n_clients=50"))
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_an_opt_in_signal_adds_its_events_and_keeps_the_base_ones(tmp_path):
    p = synthetic.params_of(dataset_cfg(tmp_path, "dataset.n_clients=300", "dataset.max_events=60"))
    base, base_clients = synthetic.generate(p)
    with_all = {**p, "signals": {**p["signals"], **{k: 1.0 for k in synthetic.EXTRA_SIGNALS}}}
    events, clients = synthetic.generate(with_all)
    added = {"periodic": 12, "regime": 12, "burst": 8, "gaps": 16}
    assert len(events) == len(base) + 300 * sum(added.values())
    # the base events are all still there, the same rows; the base factors too
    key = ["client", "seconds", "mcc", "amount"]
    assert len(base.merge(events, on=key)) == len(base)
    base_factors = [f"z_{k}" for k in synthetic.SIGNALS]
    assert np.array_equal(clients[base_factors], base_clients[base_factors])
    # every event stays in the year and in the daytime of the base events
    day, clock = events["seconds"] // 86400, events["seconds"] % 86400
    assert day.between(0, synthetic.YEAR_DAYS - 1).all() and clock.between(8 * 3600, 22 * 3600).all()
    assert set(clients.columns) >= {f"z_{k}" for k in synthetic.EXTRA_SIGNALS}


def hand_feature(kind: str, events: pd.DataFrame, schema: str) -> pd.Series:
    """A simple feature of the kind, from the loaded canonical events (days only: age_pred has no clock)."""
    code = (lambda m: synthetic.CATALOG.tolist().index(m)) if schema == "age_pred" else (lambda m: m)
    day = (events["event_time"] - events["event_time"].min()).dt.days
    events = events.assign(day=day)
    by = events.groupby("client_id", observed=True)
    if kind == "periodic":  # share of the subscription's gaps that are one month
        sub = events[events["mcc"] == code(synthetic.SUBSCRIPTION)]
        gap = sub.groupby("client_id", observed=True)["day"].diff()
        return gap.between(29, 32).groupby(sub["client_id"], observed=True).mean()
    if kind == "regime":  # where the first block's events sit in the sequence, against the second's (order only)
        position = by.cumcount()

        def mean_position(mcc):
            return position[events["mcc"] == code(mcc)].groupby(events["client_id"], observed=True).mean()

        return mean_position(synthetic.REGIME_SECOND) - mean_position(synthetic.REGIME_FIRST)
    if kind == "burst":  # events in the last 14 days of the data
        return (events["day"] > events["day"].max() - 14).groupby(events["client_id"], observed=True).sum()
    if kind == "gaps":  # share of transactions on the same day as the previous one
        return (by["day"].diff() == 0).groupby(events["client_id"], observed=True).mean()
    raise AssertionError(kind)


def aggregates_auroc(events: pd.DataFrame, y: pd.Series) -> float:
    """Per-category shares and counts, amount mean/std, total count: what the aggregates baseline sees."""
    events = events.assign(log_amount=np.log(events["amount"].abs()))
    x = pd.concat(
        [
            pd.crosstab(events["client_id"], events["mcc"], normalize="index").add_prefix("share_"),
            pd.crosstab(events["client_id"], events["mcc"]).add_prefix("count_"),
            events.groupby("client_id", observed=True)["log_amount"].agg(["mean", "std", "count"]),
        ],
        axis=1,
    ).loc[y.index]
    x = (x - x.mean()) / (x.std() + 1e-9)
    proba = cross_val_predict(
        LogisticRegression(max_iter=2000, C=0.1), x.to_numpy(), y.to_numpy(), cv=5, method="predict_proba"
    )[:, 1]
    return roc_auc_score(y, proba)


@pytest.mark.parametrize("schema", synthetic.SCHEMAS)
@pytest.mark.parametrize("kind", synthetic.EXTRA_SIGNALS)
def test_each_signal_is_planted_in_every_schema_and_invisible_to_aggregates(tmp_path, schema, kind):
    weights = "{" + ", ".join(f"{k}: {float(k == kind)}" for k in synthetic.SIGNALS + synthetic.EXTRA_SIGNALS) + "}"
    ds = dataset_cfg(
        tmp_path,
        f"dataset.schema={schema}",
        "dataset.n_clients=1000",
        "dataset.max_events=60",
        "dataset.unlabeled_fraction=0",
        "dataset.label_noise=0",
        f"dataset.signals={weights}",
    )
    raw = synthetic.ensure_raw(ds)
    data = loaders.load(ds)
    events = data.events.astype({"client_id": str})
    targets = data.targets.astype({"client_id": str}).set_index("client_id")["target"]
    # age_pred has 4 classes (quartiles of the score): the top half against the bottom half
    y = (targets >= 2).astype(int) if schema == "age_pred" else targets
    feature = hand_feature(kind, events, schema).reindex(y.index).fillna(0)
    assert roc_auc_score(y, feature) > 0.7, kind
    assert aggregates_auroc(events, y) < 0.6, kind
    # the oracle holds the new factor, and it explains the label
    oracle = oracle_features(raw, ds.id_column).loc[y.index]
    assert f"oracle_{kind}" in oracle.columns and roc_auc_score(y, oracle[f"oracle_{kind}"]) > 0.95


def signal_grid():
    """bench/signal_grid.py as a module (bench/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "signal_grid.py"
    spec = importlib.util.spec_from_file_location("signal_grid", path)
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    return grid


def val_predictions(name: str, y: np.ndarray, p1: np.ndarray) -> pd.DataFrame:
    """A binary feature set's prediction rows (llm4trx.data.predictions) for 300 val clients, 5 folds."""
    from llm4trx.data.predictions import prediction_rows

    ids = [f"c{i}" for i in range(len(y))]
    proba = np.c_[1 - p1, p1]
    return prediction_rows(name, ["0", "1"], ids, y, np.arange(len(y)) % 5, proba, ids[:2], y[:2], proba[:2])


def test_the_grid_cells_plant_their_signal_alone_or_on_top_of_the_defaults(tmp_path):
    grid = signal_grid()
    only = synthetic.params_of(dataset_cfg(tmp_path, *grid.signal_overrides("burst", "only")))["signals"]
    assert only == {"mcc_mix": 0.0, "amount": 0.0, "trend": 0.0, "order": 0.0, "burst": 1.0}
    plus = synthetic.params_of(dataset_cfg(tmp_path, *grid.signal_overrides("gaps", "plus")))["signals"]
    assert plus == {"mcc_mix": 1.0, "amount": 1.0, "trend": 1.0, "order": 1.0, "gaps": 1.0}
    assert grid.signal_overrides("default", "only") == []
    assert grid.parse_cells("gender:*,rosbank:regime") == [("gender", k) for k in grid.KINDS] + [("rosbank", "regime")]
    with pytest.raises(SystemExit, match="--cells 'rosbank:trend'"):
        grid.parse_cells("rosbank:trend")


def test_grid_gap_against_an_earlier_variant_is_paired_over_the_same_clients(tmp_path):
    """bench/signal_grid.py --against: a variant that ranks every val client right is `better` than one that
    guesses, and the same predictions against themselves give a gap of exactly 0."""
    from llm4trx.data.predictions import write_predictions

    grid = signal_grid()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    write_predictions([val_predictions("llm", y, 0.1 + 0.8 * y)], tmp_path / "predictions-good-s12.parquet")
    write_predictions([val_predictions("llm", y, rng.random(300))], tmp_path / "predictions-guess-s12.parquet")
    line = grid.gaps_against(tmp_path, "good", "guess", "auroc", [12])
    assert re.search(r"llm \+0\.\d+ \[\+0\.\d+, \+0\.\d+\] better$", line), line
    same = grid.gaps_against(tmp_path, "good", "good", "auroc", [12])
    assert "llm +0.000 [+0.000, +0.000] not distinguishable" in same, same
    # a second seed where the variants swap places: over both seeds, drawn with replacement, no verdict; the
    # seed-12-only comparison still reads the seed-12 files alone
    write_predictions([val_predictions("llm", y, rng.random(300))], tmp_path / "predictions-good-s21.parquet")
    write_predictions([val_predictions("llm", y, 0.1 + 0.8 * y)], tmp_path / "predictions-guess-s21.parquet")
    both = grid.gaps_against(tmp_path, "good", "guess", "auroc", [12, 21])
    assert re.search(r"llm [+-]0\.\d+ \[-0\.\d+, \+0\.\d+\] not distinguishable \(2 seeds\)$", both), both
    assert grid.gaps_against(tmp_path, "good", "guess", "auroc", [12]) == line


def test_a_cell_row_is_the_mean_over_its_seeds_runs():
    grid = signal_grid()
    runs = [
        {"schema": "gender", "kind": "burst", "seed": 12, "wall_s": 50, "metric": "auroc", "llm": 0.6, "coles": 0.7},
        {"schema": "gender", "kind": "burst", "seed": 21, "wall_s": 40, "metric": "auroc", "llm": 0.5, "coles": None},
    ]
    for r in runs:
        r.update({c: r.get(c) for c in grid.COLUMNS})
    row = grid.mean_over_seeds(runs)
    assert row["llm"] == pytest.approx(0.55) and row["coles"] == 0.7 and row["random"] is None
    assert row["seeds"] == [12, 21] and row["wall_s"] == 90 and row["runs"] == runs
    assert grid.mean_over_seeds([runs[0], {**runs[1], "error": "run.sh exit 1"}])["error"] == "run.sh exit 1"


def test_grid_gaps_within_a_variant_compare_the_llm_with_each_baseline(tmp_path):
    """bench/signal_grid.py's per-cell gaps: an llm that ranks every val client right is `better` than a coles
    that guesses; llm against aggregates equal to it gives exactly 0; a missing set is left out."""
    from llm4trx.data.predictions import write_predictions

    grid = signal_grid()
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    good = 0.1 + 0.8 * y
    sets = [val_predictions("llm", y, good), val_predictions("coles", y, rng.random(300))]
    sets.append(val_predictions("aggregates", y, good))
    write_predictions(sets, tmp_path / "predictions-preset-s12.parquet")
    text, gaps = grid.gaps_within(tmp_path, "preset", "auroc", [12])
    assert gaps["llm - coles"]["verdict"] == "better" and gaps["llm - coles"]["low"] > 0, text
    assert {k: gaps["llm - aggregates"][k] for k in ("gap", "low", "high", "verdict")} == {
        "gap": 0.0,
        "low": 0.0,
        "high": 0.0,
        "verdict": "not distinguishable",
    }
    assert "llm+aggregates - aggregates" not in gaps and "llm - coles +0." in text
    # on test (for information): the gaps over the test clients, where llm ranks them all right and coles all
    # wrong (AUROC 1 against 0), while on val both are the same predictions (gap 0); labelled so
    from llm4trx.data.predictions import prediction_rows

    ids, folds, right = [f"c{i}" for i in range(300)], np.arange(300) % 5, np.c_[1 - good, good]
    test_sets = [
        prediction_rows(name, ["0", "1"], ids, y, folds, right, ids, y, on_test)
        for name, on_test in (("llm", right), ("coles", right[:, ::-1]))
    ]
    write_predictions(test_sets, tmp_path / "predictions-test-s12.parquet")
    text, on_test = grid.gaps_within(tmp_path, "test", "auroc", [12], "test")
    assert on_test["llm - coles"]["gap"] == pytest.approx(1.0) and on_test["llm - coles"]["verdict"] == "better"
    assert text.startswith("  gaps (test, for information, paired bootstrap 95 %)"), text
    assert grid.gaps_within(tmp_path, "test", "auroc", [12])[1]["llm - coles"]["gap"] == 0.0
    # ... and the plot of those gaps (bench writes one per grid): a row per cell, the missing gap left out
    grid.plot_grid([("rosbank:default", gaps), ("gender:burst", gaps)], tmp_path / "grid.png", "test grid")
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as image:
        assert image.size[0] > 400 and image.size[1] > 150


def test_a_rerun_of_some_cells_replaces_their_rows_and_keeps_the_others(tmp_path):
    grid = signal_grid()
    path = tmp_path / "only" / "grid-preset.json"
    grid.write_rows(path, [{"schema": "rosbank", "kind": k, "seeds": [12]} for k in ("default", "regime")])
    grid.write_rows(path, [{"schema": "rosbank", "kind": "regime", "seeds": [12, 21]}])
    rows = {(r["schema"], r["kind"]): r["seeds"] for r in json.loads(path.read_text())}
    assert rows == {("rosbank", "default"): [12], ("rosbank", "regime"): [12, 21]}


def test_coles_tuned_per_cell_is_the_best_variant_on_val_and_the_llm_is_judged_against_it(tmp_path):
    """bench/coles_per_cell.py: of the preset's CoLES and the variants run on a cell, the one best on val is
    kept, and llm − that CoLES is computed on val and test; a variant worse than the preset is not chosen."""
    import importlib.util
    from pathlib import Path

    from llm4trx.data.predictions import write_predictions

    path = Path(__file__).resolve().parents[1] / "bench" / "coles_per_cell.py"
    spec = importlib.util.spec_from_file_location("coles_per_cell", path)
    per_cell = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(per_cell)
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    noisy = 0.3 * y + 0.7 * rng.random(300)  # partly right: AUROC ~0.8
    sets = [val_predictions("llm", y, 0.1 + 0.8 * y), val_predictions("coles", y, rng.random(300))]
    write_predictions(sets, tmp_path / "predictions-preset-s12.parquet")
    write_predictions([val_predictions("coles", y, noisy)], tmp_path / "predictions-coles_better-s12.parquet")
    write_predictions([val_predictions("coles", y, 1 - noisy)], tmp_path / "predictions-coles_worse-s12.parquet")
    row = per_cell.tuned_coles(tmp_path, "preset", ["coles_worse", "coles_better"], "auroc", None)
    assert row["chosen"] == "coles_better" and row["seeds"] == [12] and row["llm_val"] == pytest.approx(1.0)
    assert (
        row["coles_val"]["coles_better"]
        > 0.8
        > 0.6
        > row["coles_val"]["preset"]
        > 0.4
        > row["coles_val"]["coles_worse"]
    )
    gap = row["llm - tuned coles, val"]
    assert gap["gap"] == pytest.approx(1.0 - row["coles_val"]["coles_better"]) and gap["verdict"] == "better"
    assert row["llm - tuned coles, test"] is not None  # the 2 test clients of val_predictions: a gap, no verdict asked
    per_cell.plot_cells(
        [{"schema": "gender", "kind": "regime", **row}], ["preset", "coles_worse", "coles_better"], tmp_path / "p.png"
    )
    from PIL import Image

    with Image.open(tmp_path / "p.png") as image:
        assert image.size[0] > 200 and image.size[1] > 150
    # a seed only the preset has is left out of the choice (the candidates are compared over the same seeds)
    write_predictions(sets, tmp_path / "predictions-preset-s21.parquet")
    assert per_cell.tuned_coles(tmp_path, "preset", ["coles_better"], "auroc", None)["seeds"] == [12]
    with pytest.raises(SystemExit, match="predictions-absent"):
        per_cell.tuned_coles(tmp_path, "absent", ["coles_better"], "auroc", None)
