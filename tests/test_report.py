"""The multi-seed report (llm4trx.report) on validation results and loss logs in the contract's format."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llm4trx.core.config import compose
from llm4trx.core.errors import DataError, StageInputMissing
from llm4trx.report import run

ROOT = Path(__file__).resolve().parents[1]
# Per feature set: the test AUROC around which the fake seeds scatter.
LEVELS = {"llm": 0.80, "aggregates": 0.78, "coles": 0.75, "random": 0.50, "llm+aggregates": 0.82}


def write_fake_seed(experiment_dir: Path, seed: int, sets=LEVELS) -> dict:
    """validation/results.json and checkpoints/metrics.jsonl of one seed, as validate and pretrain write them."""
    rng = random.Random(seed)
    feature_sets = {}
    for name, level in sets.items():
        shift = rng.uniform(-0.02, 0.02)
        folds = [level + shift + rng.uniform(-0.01, 0.01) for _ in range(5)]
        mean = sum(folds) / 5
        std = (sum((f - mean) ** 2 for f in folds) / 4) ** 0.5
        feature_sets[name] = {
            "auroc": {"val_mean": mean + 0.01, "val_std": std, "test_mean": mean, "test_std": std, "folds": folds},
            "accuracy": {"val_mean": mean - 0.1, "val_std": std, "test_mean": mean - 0.1, "test_std": std,
                         "folds": [f - 0.1 for f in folds]},
        }
    results = {"dataset": "synthetic", "task": "binary", "metrics": ["auroc", "accuracy"], "feature_sets": feature_sets}
    run_dir = experiment_dir / f"seed_{seed}"
    (run_dir / "validation").mkdir(parents=True)
    (run_dir / "validation" / "results.json").write_text(json.dumps(results))
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
        [sys.executable, "-m", "llm4trx.report", f"paths.output_root={out_root}", "hydra.run.dir=" + str(tmp_path / "h")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()  # stdout holds the stage's start line
    assert len(lines) == 1 and "no seed has validation results" in lines[0] and "run_multi_seed.sh" in lines[0]
    assert proc.stdout.startswith("report: started") and "Traceback" not in proc.stdout


def test_feature_sets_are_placed_between_random_and_oracle():
    from llm4trx.evaluation.tables import summary_table as markdown_table
    from llm4trx.report import summarize

    def result(scores):
        return {"dataset": "synthetic", "metrics": ["auroc"], "feature_sets": {
            name: {"auroc": {"test_mean": v, "test_std": 0.01, "val_mean": v}} for name, v in scores.items()}}

    summary = summarize({1: result({"llm": 0.7, "random": 0.5, "oracle": 0.9}),
                         2: result({"llm": 0.7, "random": 0.5, "oracle": 0.9})})
    assert summary["feature_sets"]["llm"]["auroc"]["random_to_oracle"] == pytest.approx(0.5)
    table = "\n".join(markdown_table(summary))
    assert "random → oracle" in table and "| 50 % |" in table and "| 100 % |" in table
    assert "random → oracle" not in "\n".join(markdown_table(summarize({1: result({"llm": 0.7, "random": 0.5})})))
