"""Training curves: pretraining's checkpoints/metrics.jsonl ({"step", "split", "loss"} per line, written by
the llm4trx_metrics_jsonl logger), CoLES's coles/losses.jsonl ({"epoch", "loss"}: the mean training loss of each
epoch) and fine-tuning's finetune/curves.json; their paths, writers and readers (the report and the console
read them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm4trx.core import registry
from llm4trx.core.errors import DataError, load_json

METRICS_FILE = registry.file("pretrain", "metrics")  # the name the Composer logger is configured with


def metrics_path(folder: Path) -> Path:
    return Path(folder) / METRICS_FILE


def coles_losses_path(folder: Path) -> Path:
    return Path(folder) / registry.file("coles", "losses")


def curves_path(folder: Path) -> Path:
    return Path(folder) / registry.file("finetune", "curves")


def load_jsonl_records(path: Path, fields: dict[str, type], shape: str) -> list[dict[str, Any]]:
    """The lines of a loss log as {field: type(value)}; [] when the file is not there. A line that is not such
    a JSON object raises DataError naming the file, the row and `shape` (what a line should look like)."""
    if not path.is_file():
        return []
    records = []
    for row, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records.append({name: kind(record[name]) for name, kind in fields.items()})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise DataError(path, f"expected a JSON line {shape}", row=row) from None
    return records


def read_losses(folder: Path) -> list[dict[str, Any]]:
    """Lines {"step", "split", "loss"} of the pretraining log in the pretrain stage's `folder`; [] when none."""
    return load_jsonl_records(
        metrics_path(folder),
        {"step": int, "split": str, "loss": float},
        '{"step": int, "split": "train"|"eval", "loss": float}',
    )


def last_losses(folder: Path) -> dict[str, float]:
    """{split: its last logged loss} of the pretraining log in `folder`, lines that are not such skipped (for
    the console's end line, which must never fail)."""
    losses: dict[str, float] = {}
    path = metrics_path(folder)
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                losses[row["split"]] = float(row["loss"])
            except (ValueError, KeyError, TypeError):
                continue
    return losses


def write_coles_losses(folder: Path, epochs: list[dict]) -> None:
    coles_losses_path(folder).write_text("".join(json.dumps(e) + "\n" for e in epochs))


def read_coles_losses(folder: Path) -> list[dict[str, Any]]:
    """Lines {"epoch", "loss"} the coles stage wrote; [] when there is none (CoLES not run or skipped)."""
    return load_jsonl_records(coles_losses_path(folder), {"epoch": int, "loss": float}, '{"epoch": int, "loss": float}')


def write_curves(folder: Path, curves: dict[str, Any]) -> None:
    curves_path(folder).write_text(json.dumps(curves, indent=2) + "\n")


def read_curves(folder: Path) -> dict[str, Any] | None:
    """Fine-tuning learning curves of one seed (finetune/curves.json); None when the stage did not run."""
    path = curves_path(folder)
    if not path.is_file():
        return None
    curves = load_json(path)
    if "runs" not in curves or "metric" not in curves:
        raise DataError(path, "missing key 'runs' or 'metric' (written by python -m llm4trx.finetune)")
    return curves
