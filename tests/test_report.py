"""The multi-seed report (llm4trx.report) on validation results and loss logs in the contract's format."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from statistics import NormalDist

from llm4trx.core.config import compose
from llm4trx.core.errors import DataError, StageInputMissing
from llm4trx.data.predictions import prediction_rows, write_predictions
from llm4trx.report import run

ROOT = Path(__file__).resolve().parents[1]
# Per feature set: the test AUROC around which the fake seeds scatter.
LEVELS = {"llm": 0.80, "aggregates": 0.78, "coles": 0.75, "random": 0.50, "llm+aggregates": 0.82}


N_VAL, N_TEST = 400, 150


def fake_predictions(seed: int, sets) -> list:
    """Per-client probabilities whose AUROC is about each set's level: scores y * d + N(0, 1), where
    AUROC = Phi(d / sqrt 2). The same clients and targets in every seed; the noise is the seed's."""
    y = np.random.default_rng(0).integers(0, 2, N_VAL + N_TEST)
    rng = np.random.default_rng(seed)
    frames = []
    for name, level in sets.items():
        d = 2**0.5 * NormalDist().inv_cdf(level)
        p = 1 / (1 + np.exp(-(y * d + rng.standard_normal(len(y)))))
        proba = np.stack([1 - p, p], axis=1)
        frames.append(
            prediction_rows(
                name,
                [0, 1],
                [f"c{i:04d}" for i in range(N_VAL)],
                y[:N_VAL],
                np.arange(N_VAL) % 5,
                proba[:N_VAL],
                [f"t{i:04d}" for i in range(N_TEST)],
                y[N_VAL:],
                proba[N_VAL:],
            )
        )
    return frames


def write_fake_seed(experiment_dir: Path, seed: int, sets=LEVELS, predictions: bool = True) -> dict:
    """validation/results.json (+ predictions.parquet) and checkpoints/metrics.jsonl of one seed, as validate
    and pretrain write them."""
    rng = random.Random(seed)
    feature_sets = {}
    for name, level in sets.items():
        shift = rng.uniform(-0.02, 0.02)
        folds = [level + shift + rng.uniform(-0.01, 0.01) for _ in range(5)]
        mean = sum(folds) / 5
        std = (sum((f - mean) ** 2 for f in folds) / 4) ** 0.5
        feature_sets[name] = {
            "auroc": {
                "val_mean": mean + 0.01,
                "val_std": std,
                "val_oof": mean + 0.005,
                "test_mean": mean,
                "test_std": std,
                "folds": folds,
            },
            "accuracy": {
                "val_mean": mean - 0.1,
                "val_std": std,
                "test_mean": mean - 0.1,
                "test_std": std,
                "folds": [f - 0.1 for f in folds],
            },
        }
    results = {"dataset": "synthetic", "task": "binary", "metrics": ["auroc", "accuracy"], "feature_sets": feature_sets}
    run_dir = experiment_dir / f"seed_{seed}"
    (run_dir / "validation").mkdir(parents=True)
    (run_dir / "validation" / "results.json").write_text(json.dumps(results))
    if predictions:
        write_predictions(fake_predictions(seed, sets), run_dir / "validation" / "predictions.parquet")
    (run_dir / "checkpoints").mkdir()
    lines = [{"step": s, "split": "train", "loss": 6.0 / (1 + s / 10) + rng.uniform(0, 0.2)} for s in range(1, 61)]
    lines += [{"step": s, "split": "eval", "loss": 6.2 / (1 + s / 10)} for s in range(10, 61, 10)]
    (run_dir / "checkpoints" / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (run_dir / "coles").mkdir()
    epochs = [{"epoch": e, "loss": 150.0 / e + rng.uniform(0, 1)} for e in range(1, 11)]
    (run_dir / "coles" / "losses.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    return results


def test_report_aggregates_seeds_into_tables_json_and_plots(out_root):
    cfg = compose([f"paths.output_root={out_root}", "seeds=[1,2,3]", "experiment_name=exp"])
    experiment_dir = Path(cfg.paths.experiment_dir)
    written = {seed: write_fake_seed(experiment_dir, seed) for seed in (1, 2, 3)}

    report = run(cfg)

    assert report == experiment_dir / "report"
    summary = json.loads((report / "report.json").read_text())["datasets"]["synthetic"]
    assert summary["seeds"] == [1, 2, 3] and summary["missing_seeds"] == []
    assert list(summary["feature_sets"]) == ["llm+aggregates", "llm", "aggregates", "coles", "random"]
    llm = summary["feature_sets"]["llm"]["auroc"]
    per_seed = [written[s]["feature_sets"]["llm"]["auroc"]["test_mean"] for s in (1, 2, 3)]
    mean = sum(per_seed) / 3
    assert llm["test_mean"] == pytest.approx(mean)
    assert llm["test_std"] == pytest.approx((sum((v - mean) ** 2 for v in per_seed) / 2) ** 0.5)
    fold_stds = [written[s]["feature_sets"]["llm"]["auroc"]["test_std"] for s in (1, 2, 3)]
    assert llm["fold_std"] == pytest.approx(sum(fold_stds) / 3)

    md = (report / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| random |"))
    rnd = summary["feature_sets"]["random"]["auroc"]
    assert f"{rnd['test_mean']:.4f} ± {rnd['test_std']:.4f}" in row
    assert "| **llm+aggregates** |" in md and "How to read" in md
    for png in ("metrics_synthetic.png", "loss_synthetic.png", "coles_loss_synthetic.png"):
        assert f"]({png})" in md
        with Image.open(report / png) as image:
            assert image.size[0] > 550 and image.size[1] > 300
    assert [e["epoch"] for e in summary["coles_losses"]["2"]] == list(range(1, 11))  # the coles stage's lines


def test_missing_seed_is_listed_and_feature_sets_of_some_seeds_counted(out_root):
    cfg = compose([f"paths.output_root={out_root}", "seeds=[1,2,5]"])
    experiment_dir = Path(cfg.paths.experiment_dir)
    write_fake_seed(experiment_dir, 1)
    write_fake_seed(experiment_dir, 2, sets={"llm": 0.8, "random": 0.5})
    report = run(cfg)
    summary = json.loads((report / "report.json").read_text())["datasets"]["synthetic"]
    assert summary["missing_seeds"] == [5]
    assert summary["feature_sets"]["coles"]["auroc"]["n_seeds"] == 1
    assert summary["feature_sets"]["llm"]["auroc"]["n_seeds"] == 2
    assert "Missing seeds" in (report / "report.md").read_text()


def test_report_without_results_names_the_command(out_root):
    with pytest.raises(StageInputMissing, match="run_multi_seed.sh"):
        run(compose([f"paths.output_root={out_root}"]))


def test_malformed_loss_line_names_file_and_row(out_root):
    cfg = compose([f"paths.output_root={out_root}", "seeds=[1]"])
    write_fake_seed(Path(cfg.paths.experiment_dir), 1)
    log = Path(cfg.paths.experiment_dir) / "seed_1" / "checkpoints" / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "loss": 1.0}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl, row 67"):
        run(cfg)
    assert not (Path(cfg.paths.experiment_dir) / "report").exists()


def test_report_entry_point_prints_one_error_line(out_root, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm4trx.report",
            f"paths.output_root={out_root}",
            "hydra.run.dir=" + str(tmp_path / "h"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()  # stdout holds the stage's start line
    assert len(lines) == 1 and "no seed has validation results" in lines[0] and "run_multi_seed.sh" in lines[0]
    assert proc.stdout.startswith("report: started") and "Traceback" not in proc.stdout


def test_feature_sets_are_placed_between_random_and_oracle():
    from llm4trx.evaluation.tables import summary_table as markdown_table
    from llm4trx.report import summarize

    def result(scores):
        return {
            "dataset": "synthetic",
            "metrics": ["auroc"],
            "feature_sets": {
                name: {"auroc": {"test_mean": v, "test_std": 0.01, "val_mean": v}} for name, v in scores.items()
            },
        }

    summary = summarize(
        {1: result({"llm": 0.7, "random": 0.5, "oracle": 0.9}), 2: result({"llm": 0.7, "random": 0.5, "oracle": 0.9})}
    )
    assert summary["feature_sets"]["llm"]["auroc"]["random_to_oracle"] == pytest.approx(0.5)
    table = "\n".join(markdown_table(summary))
    assert "random → oracle" in table and "| 50 % |" in table and "| 100 % |" in table
    assert "random → oracle" not in "\n".join(markdown_table(summarize({1: result({"llm": 0.7, "random": 0.5})})))


def test_report_states_every_gap_with_a_paired_bootstrap_interval_and_verdict(out_root):
    from sklearn.metrics import roc_auc_score

    cfg = compose([f"paths.output_root={out_root}", "seeds=[1,2,3]", "report.bootstrap.n=300"])
    experiment_dir = Path(cfg.paths.experiment_dir)
    sets = {"llm": 0.80, "aggregates": 0.78, "coles": 0.70, "random": 0.50, "llm+aggregates": 0.82, "llm+coles": 0.80}
    for seed in (1, 2):
        write_fake_seed(experiment_dir, seed, sets)
    write_fake_seed(experiment_dir, 3, sets, predictions=False)  # validated before predictions existed
    report = run(cfg)
    summary = json.loads((report / "report.json").read_text())["datasets"]["synthetic"]
    assert summary["gap_seeds"] == [1, 2] and summary["seeds_without_predictions"] == [3]
    gaps = {(g["a"], g["b"], g["split"], g["metric"]): g for g in summary["gaps"]}
    pairs = [
        ("llm", "aggregates"),
        ("llm", "coles"),
        ("llm", "random"),
        ("llm+aggregates", "aggregates"),
        ("llm+coles", "coles"),
        ("llm+coles", "llm"),
    ]
    assert sorted(gaps) == sorted(
        (a, b, s, m) for a, b in pairs for s in ("test", "val") for m in ("auroc", "accuracy")
    )
    # The gap is the seeds' mean of the AUROC difference on all clients of the split (sklearn's AUROC)
    frames = {s: pd.read_parquet(experiment_dir / f"seed_{s}" / "validation" / "predictions.parquet") for s in (1, 2)}

    def auroc(seed, name, split):
        rows = frames[seed].query("feature_set == @name and split == @split")
        return roc_auc_score(rows["target"], rows["p_1"])

    for split, n in (("test", N_TEST), ("val", N_VAL)):
        g = gaps[("llm", "random", split, "auroc")]
        assert g["gap"] == pytest.approx(np.mean([auroc(s, "llm", split) - auroc(s, "random", split) for s in (1, 2)]))
        assert g["n_clients"] == n and g["n_seeds"] == 2
        assert g["low"] < g["gap"] < g["high"] and g["verdict"] == "better"  # 0.80 vs 0.50: far apart
    for g in summary["gaps"]:  # the verdict is read off the interval
        assert g["verdict"] == ("better" if g["low"] > 0 else "worse" if g["high"] < 0 else "not distinguishable")
    # more clients resolve more: the val interval (400 clients) is narrower than the test one (150)
    width = {
        s: gaps[("llm", "aggregates", s, "auroc")]["high"] - gaps[("llm", "aggregates", s, "auroc")]["low"]
        for s in ("test", "val")
    }
    assert width["val"] < width["test"], width
    md = (report / "report.md").read_text()
    assert "### Gaps" in md and "Seeds without predictions.parquet" in md and "](gaps_synthetic.png)" in md
    row = next(line for line in md.splitlines() if line.startswith("| llm − random |"))
    assert row.count("**better**") == 2
    llm = summary["feature_sets"]["llm"]["auroc"]
    assert llm["val_oof_mean"] is not None and f"{llm['val_oof_mean']:.4f} ± {llm['val_oof_std']:.4f}" in md
    with Image.open(report / "gaps_synthetic.png") as image:
        assert image.size[0] > 550 and image.size[1] > 250


def test_predictions_of_other_clients_in_another_seed_are_refused(out_root):
    cfg = compose([f"paths.output_root={out_root}", "seeds=[1,2]", "report.bootstrap.n=50"])
    experiment_dir = Path(cfg.paths.experiment_dir)
    write_fake_seed(experiment_dir, 1)
    write_fake_seed(experiment_dir, 2)
    path = experiment_dir / "seed_2" / "validation" / "predictions.parquet"
    frame = pd.read_parquet(path)
    write_predictions([frame[frame["client_id"] != "t0003"]], path)
    with pytest.raises(DataError, match=r"seed 2: feature set 'llm' has 149 test clients, the other seeds 150"):
        run(cfg)
    assert not (experiment_dir / "report").exists()


def test_report_names_the_downstream_model_the_seeds_were_validated_with(out_root):
    cfg = compose([f"paths.output_root={out_root}", "seeds=[1,2]", "experiment_name=heads"])
    experiment_dir = Path(cfg.paths.experiment_dir)
    for seed in (1, 2):
        write_fake_seed(experiment_dir, seed, predictions=False)
    md = (run(cfg) / "report.md").read_text()
    assert "LightGBM random_state:" in md and "validate.head" not in md  # results from before the key: LightGBM
    for seed in (1, 2):
        path = experiment_dir / f"seed_{seed}" / "validation" / "results.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "head": "logistic"}))
    report = run(cfg)
    assert json.loads((report / "report.json").read_text())["datasets"]["synthetic"]["heads"] == ["logistic"]
    assert "Downstream model (validate.head): logistic" in (report / "report.md").read_text()
