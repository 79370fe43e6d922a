"""The default preset on a grid of sequence signals: one line per (schema, signal kind) cell, val only.

Each cell is a full run of `experiment=smoke` (scripts/run.sh: prepare → ... → coles → validate) per seed,
on the synthetic generator in one schema with one signal kind planted (llm4trx.data.synthetic):

- `--mode only` (default): that signal alone carries the label (every other weight 0; the other factors still
  shape the sequences, as nuisance), so a feature set's score says whether it sees that kind;
- `--mode plus`: the default signals (mcc_mix, amount, trend, order) plus that one.

The kind `default` is the preset's own data (the default signals, no opt-in kind) in both modes. CoLES, the
LM and the validation run with whatever the preset (and the overrides) say: nothing here fixes their sizes.
A line gives the headline metric of the schema on val (out-of-fold when results.json has it, else the fold
mean) for llm, coles, aggregates, llm+aggregates, oracle and random, and the llm's place between the two
references measured in the same run: (llm - random) / (oracle - random).

    PYTHONPATH=source .venv/bin/python bench/signal_grid.py [--cells rosbank:periodic,gender:burst]
        [--mode only|plus] [--seeds 12 21] [--out /tmp/signal-grid] [-- dataset.n_clients=1500
        trainer.max_duration=150ba coles.max_epochs=5 ...]

Everything after `--` is handed to every stage as Hydra overrides (sizes, levers). Each cell writes under
`<out>/<mode>/<schema>_<kind>/` (its own paths.output_root), so a rerun skips the stages already finished;
the table is also written to `<out>/<mode>/grid-<label>.json` (a rerun of some cells replaces their rows and keeps
the others'), and this run's gaps plotted in `grid-<label>.png`.
Variants of the same cell (a lever, `--label`) share its folder and reuse the stages they do not change (prepare,
coles); run them one after the other.
Under each cell's line: llm − coles, llm − aggregates and llm+aggregates − aggregates on val with the paired
bootstrap 95 % interval over clients and its verdict (also in the json, `gaps`), then the same on test, for
information only (`gaps_test`; the cells' test splits are small, and nothing is decided on them).
Each variant's per-client predictions are kept as `<cell>/predictions-<label>-s<seed>.parquet`; `--against
LABEL` prints, under each cell's line, this variant's llm and llm+aggregates minus that earlier variant's on val,
with the paired bootstrap 95 % interval and its verdict (the report's gaps).

Seeds: a line's values are means over `--seeds`; the gaps pool the seeds both sides have, and with two or more
each resample draws the seeds too (evaluation.bootstrap.resample_seeds), so the interval covers training noise.
One seed is not enough to judge a variant that retrains the LM: the preset itself, trained at seed 21 instead of
12, moved llm by -0.076 [-0.109, -0.041] on gender:regime and +0.069 [+0.040, +0.096] on rosbank:regime (val,
over clients alone). A variant that only re-pools the same LMs (embed and validate) is paired seed by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "source"))

from llm4trx.data.synthetic import EXTRA_SIGNALS, SCHEMAS, SIGNALS  # noqa: E402

KINDS = ("default", *EXTRA_SIGNALS)
COLUMNS = ("llm", "coles", "aggregates", "llm+aggregates", "oracle", "random")


def parse_cells(text: str | None) -> list[tuple[str, str]]:
    """`schema:kind,...`; `*` for every schema or kind; None: the whole grid."""
    if not text:
        return [(s, k) for s in SCHEMAS for k in KINDS]
    cells = []
    for item in text.split(","):
        schema, _, kind = item.strip().partition(":")
        schemas = SCHEMAS if schema == "*" else [schema]
        kinds = KINDS if kind in ("*", "") else [kind]
        for s in schemas:
            for k in kinds:
                if s not in SCHEMAS or k not in KINDS:
                    raise SystemExit(f"--cells {item!r}: want schema:kind with schema in {SCHEMAS} and kind in {KINDS}")
                cells.append((s, k))
    return cells


def signal_overrides(kind: str, mode: str) -> list[str]:
    if kind == "default":
        return []
    if mode == "plus":
        return [f"dataset.signals.{kind}=1.0"]
    weights = {k: 0.0 for k in SIGNALS + EXTRA_SIGNALS} | {kind: 1.0}
    return ["dataset.signals={" + ", ".join(f"{k}: {v}" for k, v in weights.items()) + "}"]


def val_of(entry: dict, metric: str) -> float | None:
    if not entry or metric not in entry:
        return None
    m = entry[metric]
    return m.get("val_oof", m.get("val_mean"))


def run_cell(schema: str, kind: str, mode: str, seed: int, out: Path, extra: list[str], label: str = "preset") -> dict:
    root = out / mode / f"{schema}_{kind}"
    overrides = [
        "experiment=smoke",
        f"seed={seed}",
        f"dataset.schema={schema}",
        f"paths.output_root={root}",
        "progress=false",
        *signal_overrides(kind, mode),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(root / "run.log", "w") as log:  # streamed, so a running cell can be followed
        proc = subprocess.run(
            ["bash", "scripts/run.sh", *overrides], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
    wall = time.time() - start
    row = {
        "schema": schema,
        "kind": kind,
        "mode": mode,
        "label": label,
        "seed": seed,
        "overrides": overrides,
        "wall_s": round(wall),
    }
    if proc.returncode:
        tail = (root / "run.log").read_text().strip().splitlines()[-1:] or [""]
        return {**row, "error": f"run.sh exit {proc.returncode}: {tail[0]} (log {root / 'run.log'})"}
    results = sorted(root.glob(f"*/*/seed_{seed}/validation/results.json"))  # this seed's, under the preset's dirs
    if not results:
        return {**row, "error": f"no validation/results.json under {root}"}
    res = json.loads(results[-1].read_text())
    metric = res["metrics"][0]  # the dataset's headline metric
    # Variants of a cell overwrite its validation/: keep this one's per-client predictions for --against.
    kept = root / f"predictions-{label}-s{seed}.parquet"
    shutil.copyfile(results[-1].parent / "predictions.parquet", kept)
    return {**row, "metric": metric, **{c: val_of(res["feature_sets"].get(c), metric) for c in COLUMNS}}


def mean_over_seeds(runs: list[dict]) -> dict:
    """One cell's row: each column's mean over the seeds' runs (each run kept under `runs`); the first error."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    row = {k: v for k, v in runs[0].items() if k not in COLUMNS and k != "seed"}
    row["seeds"] = [r["seed"] for r in runs]
    row["wall_s"] = sum(r["wall_s"] for r in runs)
    for c in COLUMNS:
        values = [r[c] for r in runs if r.get(c) is not None]
        row[c] = sum(values) / len(values) if values else None
    row["runs"] = runs
    return row


def paired_val_gap(mine, theirs, metric: str, split: str = "val"):
    """(name, {seed: predictions frame}) minus (name, {seed: frame}) on val (out-of-fold; or `split="test"`, for
    information only: levers are decided on val), over the seeds both have, with the paired bootstrap 95 %
    interval over clients, and over seeds where there are two or more (evaluation.bootstrap, the report's
    method); None when either set is missing."""
    from llm4trx.evaluation.bootstrap import aligned, paired_gap, resample_counts, resample_seeds

    seeds = sorted(set(mine[1]) & set(theirs[1]))
    ids, y, a = aligned({s: mine[1][s] for s in seeds}, mine[0], split, None)
    _, _, b = aligned({s: theirs[1][s] for s in seeds}, theirs[0], split, ids)
    seeds = [s for s in seeds if s in a and s in b]
    if not seeds:
        return None
    n = 2000
    draws = resample_seeds(len(seeds), n, 0) if len(seeds) > 1 else None
    return paired_gap(
        metric, y, [a[s] for s in seeds], [b[s] for s in seeds], resample_counts(len(ids), n, 0), 0.95, draws
    )


def described(key: str, gap) -> str:
    seeds = f" ({gap.n_seeds} seeds)" if gap.n_seeds > 1 else ""
    return f"{key} {gap.gap:+.3f} [{gap.low:+.3f}, {gap.high:+.3f}] {gap.verdict}{seeds}"


def predictions(root: Path, label: str, seeds: list[int] | None = None) -> dict:
    """{seed: predictions frame} of a variant (every seed kept, or only `seeds`)."""
    import pandas as pd

    found = {int(p.stem.rsplit("-s", 1)[1]): p for p in root.glob(f"predictions-{label}-s*.parquet")}
    return {s: pd.read_parquet(p) for s, p in sorted(found.items()) if seeds is None or s in seeds}


def gaps_against(root: Path, label: str, reference: str, metric: str, seeds: list[int]) -> str:
    """This variant's llm and llm+aggregates minus the reference variant's, on val (out-of-fold)."""
    frames = {label: predictions(root, label, seeds), reference: predictions(root, reference, seeds)}
    parts = []
    for name in ("llm", "llm+aggregates"):
        gap = paired_val_gap((name, frames[label]), (name, frames[reference]), metric)
        if gap is not None:
            parts.append(described(name, gap))
    return f"  vs {reference} (val, paired bootstrap 95 %): " + "; ".join(parts)


# The gaps within one variant: llm against each baseline, and what the llm adds to the aggregates.
WITHIN = (("llm", "coles"), ("llm", "aggregates"), ("llm+aggregates", "aggregates"))


def gaps_within(root: Path, label: str, metric: str, seeds: list[int], split: str = "val") -> tuple[str, dict]:
    """This variant's llm − coles, llm − aggregates and llm+aggregates − aggregates on val (out-of-fold), or on
    test (`split="test"`: for information, never to decide)."""
    frames = predictions(root, label, seeds)
    parts, found = [], {}
    for mine, theirs in WITHIN:
        gap = paired_val_gap((mine, frames), (theirs, frames), metric, split)
        if gap is None:
            continue
        key = f"{mine} - {theirs}"
        found[key] = gap.as_dict()
        parts.append(described(key, gap))
    where = "val" if split == "val" else f"{split}, for information"
    return f"  gaps ({where}, paired bootstrap 95 %): " + "; ".join(parts), found


def write_rows(path: Path, rows: list[dict]) -> None:
    """The label's table: these rows, replacing the same cells' rows of an earlier run of the label and keeping the
    other cells' (a later `--cells` subset, e.g. another seed on two cells, does not drop the rest; each row names
    its own overrides and seeds)."""
    kept = json.loads(path.read_text()) if path.exists() else []
    mine = {(r["schema"], r["kind"]) for r in rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r for r in kept if (r["schema"], r["kind"]) not in mine] + rows, indent=2) + "\n")


def plot_grid(cells: list[tuple[str, dict]], path: Path, title: str) -> None:
    """A forest plot of the grid: one row per cell, each of WITHIN's gaps (val) as a dot with its paired bootstrap
    95 % interval; filled where the interval excludes 0. `cells`: (cell name, {gap key: GapResult.as_dict()})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f"{a} - {b}" for a, b in WITHIN]
    colours = ("tab:red", "tab:blue", "tab:green")
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(cells) + 1.6))
    for k, (key, colour) in enumerate(zip(keys, colours)):
        offset = (k - 1) * 0.22
        for i, (_, gaps) in enumerate(cells):
            g = gaps.get(key)
            if g is None:
                continue
            decided = g["low"] > 0 or g["high"] < 0
            ax.errorbar(
                g["gap"],
                i + offset,
                xerr=[[g["gap"] - g["low"]], [g["high"] - g["gap"]]],
                fmt="o",
                color=colour,
                mfc=colour if decided else "white",
                capsize=3,
                label=key.replace(" - ", " − ") if i == 0 else None,
            )
    ax.axvline(0, color="black", linestyle="--", linewidth=0.8)
    ax.set_yticks(range(len(cells)))
    ax.set_yticklabels([name for name, _ in cells])
    ax.invert_yaxis()
    ax.set_xlabel("val gap (AUROC; accuracy on age_pred), paired bootstrap 95 %; filled: interval excludes 0")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "  -  "


def line(row: dict) -> str:
    head = f"{row['schema']:8s} {row['kind']:8s}"
    if "error" in row:
        return f"{head} FAILED {row['error']}"
    place = None
    if None not in (row["llm"], row["oracle"], row["random"]) and row["oracle"] != row["random"]:
        place = (row["llm"] - row["random"]) / (row["oracle"] - row["random"])
    return (
        f"{head} {row['metric']:8s} "
        + " ".join(f"{fmt(row[c]):>10s}" for c in COLUMNS)
        + f" {fmt(place):>9s} {row['wall_s']:6d}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", help="schema:kind,... (`*` for all); default: the whole grid")
    ap.add_argument("--mode", choices=("only", "plus"), default="only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[12], help="each cell runs once per seed")
    ap.add_argument("--out", type=Path, default=Path("/tmp/signal-grid"))
    ap.add_argument("--label", default="preset", help="names this variant's table: <out>/<mode>/grid-<label>.json")
    ap.add_argument("--against", help="a label run before on the same cells: print each cell's paired val gap to it")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every stage (after --)")
    args = ap.parse_args()
    cells = parse_cells(args.cells)
    print(
        f"signal grid: {len(cells)} cells, mode {args.mode}, seeds {args.seeds}, overrides {args.overrides or 'none'}; "
        "val: results.json val_oof, else the fold mean (the mean over seeds)",
        flush=True,
    )
    print(
        f"{'schema':8s} {'kind':8s} {'metric':8s} "
        + " ".join(f"{c:>10s}" for c in COLUMNS)
        + f" {'llm place':>9s} {'wall_s':>6s}",
        flush=True,
    )
    rows = []  # a variant (--label, overrides) reuses a cell's finished stages it does not change (prepare, coles)
    for schema, kind in cells:
        runs = [run_cell(schema, kind, args.mode, seed, args.out, args.overrides, args.label) for seed in args.seeds]
        row = mean_over_seeds(runs)
        rows.append(row)
        print(line(row), flush=True)
        if "error" not in row:
            cell = args.out / args.mode / f"{schema}_{kind}"
            text, row["gaps"] = gaps_within(cell, args.label, row["metric"], args.seeds)
            print(text, flush=True)
            text, row["gaps_test"] = gaps_within(cell, args.label, row["metric"], args.seeds, "test")
            print(text, flush=True)
            if args.against:
                print(gaps_against(cell, args.label, args.against, row["metric"], args.seeds), flush=True)
        write_rows(args.out / args.mode / f"grid-{args.label}.json", rows)
    print("llm place: (llm - random) / (oracle - random), both references measured in the same cell")
    plotted = [(f"{r['schema']}:{r['kind']}", r["gaps"]) for r in rows if r.get("gaps")]
    if plotted:
        figure = args.out / args.mode / f"grid-{args.label}.png"
        plot_grid(plotted, figure, f"signal grid, {args.label}, seeds {' + '.join(map(str, args.seeds))} (val)")
        print(f"plot: {figure}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
