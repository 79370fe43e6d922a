"""Markdown tables of validation results (one seed) and of the multi-seed report."""

from __future__ import annotations

import math
from typing import Any


def markdown_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def results_table(results: dict) -> str:
    """validation/results.md: one row per feature set, val and test mean ± std over the folds."""
    metrics = results["metrics"]
    header = ["feature set", "features"] + [f"{m} {part}" for m in metrics for part in ("val", "val OOF", "test")]
    rows = []
    for name, entry in results["feature_sets"].items():
        cells = [name, str(entry["n_features"])]
        for m in metrics:
            r = entry[m]
            cells += [
                f"{r['val_mean']:.4f} ± {r['val_std']:.4f}",
                fmt(r.get("val_oof")),
                f"{r['test_mean']:.4f} ± {r['test_std']:.4f}",
            ]
        rows.append(cells)
    lines = [f"# Validation: {results['dataset']} ({results['task']})", "", *markdown_rows(header, rows)]
    lines += [
        "",
        f"val: mean ± std over the {results['n_folds']} folds ({results['n_train']} clients); val OOF: "
        f"the metric on the out-of-fold predictions of all {results['n_train']} at once; "
        f"test: mean ± std of the {results['n_folds']} fold models on {results['n_test']} fixed test clients.",
    ]
    if results.get("from_baselines"):
        lines += [
            "",
            f"{', '.join(results['from_baselines'])}: built and validated once per dataset by the "
            "baselines stage (seed-independent with validate.lightgbm_seed=fixed).",
        ]
    seed = results.get("lightgbm_seed")
    if results.get("head") == "logistic":
        lines += ["", "Downstream model: logistic regression (validate.head=logistic, a linear probe), not LightGBM."]
    elif seed:
        lines += [
            "",
            f"LightGBM random_state {seed['random_state']} (validate.lightgbm_seed={seed['mode']}: "
            + ("fixed, as ptls-experiments" if seed["mode"] == "fixed" else "the run's seed")
            + ").",
        ]
    return "\n".join(lines) + "\n"


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def summary_table(summary: dict[str, Any]) -> list[str]:
    """The report's table of one dataset: test mean ± std over seeds, fold std, val, best row in bold."""
    metrics, headline = summary["metrics"], summary["headline"]
    header = ["feature set"]
    for metric in metrics:
        header += [f"{metric} test (mean ± std over seeds)", f"{metric} fold std"]
    header += [f"{headline} val OOF (mean ± std over seeds)", "seeds"]
    placed = any("random_to_oracle" in by[headline] for by in summary["feature_sets"].values())
    if placed:
        header.append("random → oracle")
    rows = []
    best = next(iter(summary["feature_sets"]))
    for name, by_metric in summary["feature_sets"].items():
        cells = [f"**{name}**" if name == best else name]
        for metric in metrics:
            stats = by_metric[metric]
            cells += [f"{fmt(stats['test_mean'])} ± {fmt(stats['test_std'])}", fmt(stats["fold_std"])]
        stats = by_metric[headline]
        oof = stats.get("val_oof_mean")
        val = f"{fmt(oof)} ± {fmt(stats['val_oof_std'])}" if oof is not None else fmt(stats["val_mean"]) + " (folds)"
        cells += [val, str(stats["n_seeds"])]
        if placed:
            position = stats.get("random_to_oracle")
            cells.append("–" if position is None else f"{100 * position:.0f} %")
        rows.append(cells)
    return markdown_rows(header, rows)


def gap_table(gaps: list[dict], metric: str) -> list[str]:
    """The report's gap table for one metric: a − b on test and on val, each with its interval and verdict."""
    header = [
        "gap",
        f"{metric} test: a − b [95 % CI]",
        "test verdict",
        f"{metric} val OOF: a − b [95 % CI]",
        "val verdict",
        "clients test / val",
    ]
    by_pair: dict[tuple, dict] = {}
    for g in gaps:
        if g["metric"] == metric:
            by_pair.setdefault((g["a"], g["b"]), {})[g["split"]] = g
    rows = []
    for (a, b), splits in by_pair.items():
        cells = [f"{a} − {b}"]
        for split in ("test", "val"):
            g = splits.get(split)
            cells += (
                ["–", "–"]
                if g is None
                else [
                    f"{g['gap']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]",
                    f"**{g['verdict']}**" if g["verdict"] != "not distinguishable" else g["verdict"],
                ]
            )
        cells.append(" / ".join(str(splits[s]["n_clients"]) if s in splits else "–" for s in ("test", "val")))
        rows.append(cells)
    return markdown_rows(header, rows)
