"""The validation results: what the validate and baselines stages write (results.json, results.md,
predictions.parquet) and fine-tuning's predictions.parquet;
their paths, writers and readers with the contract checks (the predictions' own checks: data/predictions.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from llm4trx.core import registry
from llm4trx.core.errors import DataError, load_json
from llm4trx.data.predictions import read_predictions, write_predictions


def results_path(folder: Path, stage: str = "validate") -> Path:
    return Path(folder) / registry.file(stage, "results")


def table_path(folder: Path, stage: str = "validate") -> Path:
    return Path(folder) / registry.file(stage, "table")


def predictions_path(folder: Path, stage: str = "validate") -> Path:
    """validate's and baselines' per-client predictions (data/predictions.py), or fine-tuning's (finetune)."""
    return Path(folder) / registry.file(stage, "predictions")


def write_results(folder: Path, stage: str, results: dict[str, Any], table: str, frames: list[pd.DataFrame]) -> None:
    """results.json, results.md and the predictions of `frames` into `folder` (validate or baselines)."""
    results_path(folder, stage).write_text(json.dumps(results, indent=2) + "\n")
    table_path(folder, stage).write_text(table)
    write_predictions(frames, predictions_path(folder, stage))


def write_finetune_predictions(folder: Path, frame: pd.DataFrame) -> None:
    """Fine-tuning's predictions: run, fold, part (val | test), client_id, p_<class>..."""
    frame.to_parquet(predictions_path(folder, "finetune"), index=False)


def read_results(folder: Path, stage: str = "validate") -> dict[str, Any]:
    """results.json, checked: the keys the report and the console read, a test_mean for every metric."""
    path = results_path(folder, stage)
    results = load_json(path)
    for key in ("dataset", "metrics", "feature_sets"):
        if key not in results:
            raise DataError(path, f"missing key {key!r} (written by python -m llm4trx.{stage})")
    for name, by_metric in results["feature_sets"].items():
        for metric in results["metrics"]:
            if "test_mean" not in by_metric.get(metric, {}):
                raise DataError(path, f"feature set {name!r} has no test_mean for metric {metric!r}")
    return results


def results_line(stage: str):
    """The end line of validate and baselines: the headline metric's test mean of every feature set."""

    def line(counts: dict, seconds: float, folder: Path) -> str:
        results = read_results(folder, stage)
        metric = results["metrics"][0]
        scores = ", ".join(
            f"{name} {entry[metric]['test_mean']:.4f}" for name, entry in results["feature_sets"].items()
        )
        skipped = "; skipped: " + ", ".join(results["skipped"]) if results.get("skipped") else ""
        return f"test {metric}: {scores}{skipped} ({table_path(folder, stage)})"

    return line


def read_stage_predictions(folder: Path, stage: str = "validate") -> pd.DataFrame:
    return read_predictions(predictions_path(folder, stage))
