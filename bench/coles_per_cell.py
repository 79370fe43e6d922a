"""CoLES tuned per grid cell on val: the best of several CoLES variants in each cell, and the LM's gaps to it.

The grid (bench/signal_grid.py) judges the LM against the preset's CoLES, chosen on the default data's val. A
cell whose signal lives in order or timing may want another CoLES; a fair comparison gives CoLES that choice
too. Run each CoLES variant on the cells with signal_grid first (only coles and validate rerun; the LM's
stages are up to date), e.g.

    bench/signal_grid.py --cells ... --label coles_e3 --out DIR -- coles.max_epochs=3 \\
        'validate.feature_sets=[coles]' 'validate.concatenations=[]'

then, for each cell, this script reads the kept per-client predictions (`predictions-<label>-s<seed>.parquet`),
scores the CoLES row of the LM's own run (`--llm-label`, the preset's CoLES) and of each `--variants` label on
val (out-of-fold, mean over the seeds both have), keeps the best, and prints llm − that CoLES on val and on test
with the paired bootstrap 95 % interval (signal_grid.paired_val_gap). The val gap is biased towards CoLES (its
variant was chosen on the same val clients), the test gap is not: both are printed. Nothing is decided on test.

    PYTHONPATH=source .venv/bin/python bench/coles_per_cell.py --out /tmp/grid_default --llm-label default_size \\
        --variants coles_e3,coles_e5,coles_cnt150 [--cells rosbank:regime,...] [--seeds 12]

Writes `<out>/<mode>/coles-per-cell-<llm-label>.json` (one row per cell) beside the grid's tables, and
`.png`: a panel per cell, each candidate's CoLES val score against the LM's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import signal_grid  # noqa: E402  (bench/ is not a package; signal_grid puts source/ on the path)

from llm4trx.evaluation.bootstrap import aligned, weighted_metric  # noqa: E402


def val_score(frames: dict, name: str, metric: str, seeds: list[int]) -> float | None:
    """`name`'s val out-of-fold metric, the mean over `seeds` (None when no seed has it)."""
    _, y, by_seed = aligned({s: frames[s] for s in seeds if s in frames}, name, "val", None)
    if not by_seed:
        return None
    everyone = np.ones((1, len(y)))
    return float(np.mean([weighted_metric(metric, y, p, everyone)[0] for p in by_seed.values()]))


def tuned_coles(cell: Path, llm_label: str, variants: list[str], metric: str, seeds: list[int] | None) -> dict:
    """One cell: each candidate's CoLES val score (over the seeds every candidate run has), the best one, and
    llm − that CoLES on val and on test."""
    frames = {label: signal_grid.predictions(cell, label, seeds) for label in (llm_label, *variants)}
    frames = {label: f for label, f in frames.items() if f}
    if llm_label not in frames:
        raise SystemExit(
            f"{cell}: no predictions-{llm_label}-s*.parquet (run bench/signal_grid.py --label {llm_label})"
        )
    common = sorted(set.intersection(*(set(f) for f in frames.values())))
    frames = {label: {s: f[s] for s in common} for label, f in frames.items()}
    scores = {label: val_score(f, "coles", metric, common) for label, f in frames.items() if f}
    scores = {label: s for label, s in scores.items() if s is not None}
    if llm_label not in scores:
        raise SystemExit(f"{cell}: no coles predictions of {llm_label!r} for seeds {common}")
    best = max(scores, key=scores.get)  # ties keep the earlier candidate: the preset first
    row = {
        "seeds": common,
        "coles_val": scores,
        "chosen": best,
        "llm_val": val_score(frames[llm_label], "llm", metric, common),
    }
    for split in ("val", "test"):
        gap = signal_grid.paired_val_gap(("llm", frames[llm_label]), ("coles", frames[best]), metric, split)
        row[f"llm - tuned coles, {split}"] = gap.as_dict() if gap is not None else None
    return row


def plot_cells(rows: list[dict], candidates: list[str], path: Path) -> None:
    """One panel per cell: each CoLES candidate's val score in `candidates` order (the chosen one filled) and the
    LM's val score as a line, so where CoLES peaks and how far the LM is from that peak reads at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, rows):
        xs = [i for i, c in enumerate(candidates) if c in row["coles_val"]]
        ax.plot(xs, [row["coles_val"][candidates[i]] for i in xs], "o-", color="tab:blue", mfc="white", label="coles")
        chosen = candidates.index(row["chosen"])
        ax.plot([chosen], [row["coles_val"][row["chosen"]]], "o", color="tab:blue", label="chosen on val")
        ax.axhline(row["llm_val"], color="tab:red", linestyle="--", label="llm")
        ax.set_xticks(range(len(candidates)))
        ax.set_xticklabels(candidates, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{row['schema']}:{row['kind']} (seeds {'+'.join(map(str, row['seeds']))})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supylabel("val, out-of-fold (AUROC; accuracy on age_pred)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cell_metric(cell: Path) -> str:
    """The cell's headline metric, as its runs' results.json name it."""
    found = sorted(cell.glob("*/*/seed_*/validation/results.json"))
    if not found:
        raise SystemExit(f"{cell}: no validation/results.json (run bench/signal_grid.py on it first)")
    return json.loads(found[-1].read_text())["metrics"][0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="signal_grid's --out")
    ap.add_argument("--mode", choices=("only", "plus"), default="only")
    ap.add_argument("--llm-label", required=True, help="the grid variant whose llm (and preset coles) is judged")
    ap.add_argument("--variants", required=True, help="comma-separated labels of the CoLES variants")
    ap.add_argument("--cells", help="schema:kind,... (default: every cell with predictions of --llm-label)")
    ap.add_argument("--seeds", type=int, nargs="+", help="default: every seed the labels share")
    args = ap.parse_args()
    base = args.out / args.mode
    if args.cells:
        cells = signal_grid.parse_cells(args.cells)
    else:
        found = base.glob(f"*/predictions-{args.llm_label}-s*.parquet")
        cells = sorted({tuple(p.parent.name.rsplit("_", 1)) for p in found})  # age_pred_regime: (age_pred, regime)
    variants = [v for v in args.variants.split(",") if v]
    print(f"CoLES per cell, chosen on val among {[args.llm_label, *variants]} (the first: the preset's)")
    print(
        "| cell | "
        + " | ".join(f"coles {v}" for v in (args.llm_label, *variants))
        + " | chosen | llm | llm − tuned coles, val | llm − tuned coles, test |"
    )
    print("|---" * (len(variants) + 6) + "|")
    rows = []
    for schema, kind in cells:
        cell = base / f"{schema}_{kind}"
        row = {
            "schema": schema,
            "kind": kind,
            **tuned_coles(cell, args.llm_label, variants, cell_metric(cell), args.seeds),
        }
        rows.append(row)
        scores = [row["coles_val"].get(v) for v in (args.llm_label, *variants)]
        gaps = []
        for split in ("val", "test"):
            g = row[f"llm - tuned coles, {split}"]
            gaps.append(f"{g['gap']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}] {g['verdict']}" if g else "—")
        print(
            f"| {schema}:{kind} | "
            + " | ".join("—" if s is None else f"{s:.3f}" for s in scores)
            + f" | {row['chosen']} | {row['llm_val']:.3f} | {gaps[0]} | {gaps[1]} |",
            flush=True,
        )
    path = base / f"coles-per-cell-{args.llm_label}.json"
    path.write_text(json.dumps(rows, indent=2) + "\n")
    plot_cells(rows, [args.llm_label, *variants], path.with_suffix(".png"))
    print(
        f"seeds: {sorted({s for r in rows for s in r['seeds']})}; val gaps favour CoLES (chosen on them); json: {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
