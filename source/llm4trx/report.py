"""Multi-seed report: `python -m llm4trx.report [overrides]` (run by scripts/run_multi_seed.sh).

Reads every seed's `validation/results.json` and `checkpoints/metrics.jsonl` under each of
`report.experiment_dirs` (one per dataset; default the current one) for the seeds in `seeds`, and writes to
`report.dir`:
  report.md    one table per dataset: every feature set's test and val (out-of-fold) metrics, mean ± std
               across seeds, and the within-seed std over the fold models (averaged over seeds); then the
               gap table: every gap the report states (evaluation.bootstrap.GAPS) with its paired bootstrap
               95 % interval over clients (seeds pooled) and its verdict, on test and on val; plots below
  report.json  the same numbers, plus every seed's value
  loss_<dataset>.png, metrics_<dataset>.png, gaps_<dataset>.png   loss curves per seed; metric bars with
               error bars; the gaps with their intervals
The gaps come from each seed's validation/predictions.parquet (report.bootstrap: n resamples, seed, level);
seeds without that file (results of an older validate) are left out of the gap table, which says so.
Std across seeds is the sample std (ddof=1; 0 for a single seed). Seeds without results are listed as
missing; no seed with results at all is an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from omegaconf import DictConfig

from llm4trx.core.cli import stage_main
from llm4trx.core.errors import DataError, StageInputMissing
from llm4trx.core import registry
from llm4trx.data.curves import metrics_path, read_coles_losses, read_curves, read_losses
from llm4trx.data.results import predictions_path, read_results, read_stage_predictions, results_path
from llm4trx.evaluation.bootstrap import report_gaps
from llm4trx.evaluation.tables import gap_table, summary_table
from llm4trx.core.stage import atomic_dir, seed_stage_dir, stage_dir

log = logging.getLogger(__name__)

# File names for the messages (the files are the validate and pretrain stages'; see core/registry.py).
RESULTS, PREDICTIONS, LOSSES = results_path(Path()).name, predictions_path(Path()).name, metrics_path(Path()).name


def spread(values: list[float]) -> float:
    return stdev(values) if len(values) > 1 else 0.0


def lightgbm_seeds(results_by_seed: dict[int, dict[str, Any]]) -> str:
    """One line: which LightGBM random_state the seeds' validations used (validate.lightgbm_seed)."""
    modes = {seed: r.get("lightgbm_seed") for seed, r in results_by_seed.items()}
    unknown = sorted(seed for seed, m in modes.items() if not m)
    known = {(m["mode"], m["random_state"]) for m in modes.values() if m}
    if unknown:
        return f"not recorded for seeds {', '.join(map(str, unknown))} (results from before validate.lightgbm_seed)"
    if len(known) == 1 and next(iter(known))[0] == "fixed":
        return f"fixed at {next(iter(known))[1]} in every seed (validate.lightgbm_seed=fixed, as ptls-experiments)"
    if all(m["mode"] == "run" for m in modes.values()):
        return "each seed's own seed (validate.lightgbm_seed=run)"
    return "mixed: " + ", ".join(f"seed {s}: {m['mode']} {m['random_state']}" for s, m in sorted(modes.items()))


def summarize(results_by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Across-seed statistics of every feature set and metric (feature sets sorted by the headline metric)."""
    first = next(iter(results_by_seed.values()))
    metrics = list(first["metrics"])
    names: list[str] = []
    for results in results_by_seed.values():
        names += [name for name in results["feature_sets"] if name not in names]
    feature_sets: dict[str, dict[str, Any]] = {}
    for name in names:
        feature_sets[name] = {}
        for metric in metrics:
            runs = {
                seed: results["feature_sets"][name][metric]
                for seed, results in results_by_seed.items()
                if name in results["feature_sets"]
            }
            test = [run["test_mean"] for run in runs.values()]
            val = [run["val_mean"] for run in runs.values() if run.get("val_mean") is not None]
            oof = [run["val_oof"] for run in runs.values() if run.get("val_oof") is not None]
            fold = [run["test_std"] for run in runs.values() if run.get("test_std") is not None]
            feature_sets[name][metric] = {
                "test_mean": mean(test),
                "test_std": spread(test),
                "fold_std": mean(fold) if fold else None,
                "val_mean": mean(val) if val else None,
                "val_std": spread(val) if val else None,
                "val_oof_mean": mean(oof) if oof else None,  # out-of-fold over all cross-validated clients
                "val_oof_std": spread(oof) if oof else None,
                "n_seeds": len(test),
                "per_seed": {str(seed): run["test_mean"] for seed, run in runs.items()},
            }
    headline = metrics[0]
    order = sorted(feature_sets, key=lambda name: -feature_sets[name][headline]["test_mean"])
    if "random" in feature_sets and "oracle" in feature_sets:  # where each set lands between floor and ceiling
        floor, ceiling = (feature_sets[n][headline]["test_mean"] for n in ("random", "oracle"))
        for name in feature_sets:
            gap = ceiling - floor
            feature_sets[name][headline]["random_to_oracle"] = (
                (feature_sets[name][headline]["test_mean"] - floor) / gap if gap else None
            )
    return {
        "dataset": first["dataset"],
        "task": first.get("task"),
        "metrics": metrics,
        "headline": headline,
        "lightgbm_seed": lightgbm_seeds(results_by_seed),
        # validate.head of each seed's validation (absent in results from before it: LightGBM)
        "heads": sorted({r.get("head", "lightgbm") for r in results_by_seed.values()}),
        "feature_sets": {name: feature_sets[name] for name in order},
    }


def gaps_of(cfg: DictConfig, predictions: dict[int, Any], metrics: list[str], where: Path) -> list[dict[str, Any]]:
    boot = cfg.report.bootstrap
    try:
        return report_gaps(
            predictions,
            metrics,
            int(boot.n),
            int(boot.seed),
            float(boot.level),
            seeds_resampled=boot.seeds == "resample",
        )
    except ValueError as err:  # the seeds' predictions do not cover the same clients
        raise DataError(where, f"{PREDICTIONS} of the seeds: {err}") from None


def collect(cfg: DictConfig, experiment_dir: Path, seeds: list[int]) -> dict[str, Any]:
    results, losses, curves, coles_losses, missing = {}, {}, {}, {}, []
    predictions, no_predictions = {}, []
    for seed in seeds:
        validation = seed_stage_dir(cfg, "validate", seed, experiment_dir)
        if results_path(validation).is_file():
            results[seed] = read_results(validation)
            if predictions_path(validation).is_file():
                predictions[seed] = read_stage_predictions(validation)
            else:
                no_predictions.append(seed)
            losses[seed] = read_losses(seed_stage_dir(cfg, "pretrain", seed, experiment_dir))
            epochs = read_coles_losses(seed_stage_dir(cfg, "coles", seed, experiment_dir))
            if epochs:
                coles_losses[str(seed)] = epochs
            found = read_curves(seed_stage_dir(cfg, "finetune", seed, experiment_dir))
            if found is not None:
                curves[str(seed)] = found
        else:
            missing.append(seed)
    if not results:
        where = results_path(seed_stage_dir(cfg, "validate", seeds[0], experiment_dir))
        raise StageInputMissing(
            f"no seed has validation results under {experiment_dir} (looked for {where} and the same for seeds "
            f"{', '.join(map(str, seeds))}); run bash scripts/run_multi_seed.sh with the same overrides first"
        )
    summary = summarize(results)
    summary.update(
        gaps=gaps_of(cfg, predictions, summary["metrics"], experiment_dir) if predictions else [],
        gap_seeds=sorted(predictions),
        seeds_without_predictions=no_predictions,
        bootstrap={k: cfg.report.bootstrap[k] for k in ("n", "seed", "level", "seeds")},
        experiment_dir=str(experiment_dir),
        seeds=sorted(results),
        missing_seeds=missing,
        losses={str(seed): records for seed, records in losses.items()},
        coles_losses=coles_losses,
        finetune_curves=curves,
        finetune_best_steps={
            seed: {
                run: {fold: c["best_step"] for fold, c in entry["folds"].items()} for run, entry in meta["runs"].items()
            }
            for seed, meta in curves.items()
        },
    )
    return summary


HOW_TO_READ = """\
## How to read this report

- One table per dataset. Rows are feature sets, best first by the headline metric (the first metric column):
  `llm` the LM embeddings, `aggregates` and `coles` the field's baselines, `random` Gaussian noise (the floor;
  as wide as `llm` and drawn per seed, or `validate.random_dim` wide and drawn once), `oracle` the synthetic
  generator's hidden factors (the ceiling; synthetic data only), `a+b` concatenations. *random → oracle*: where the set's headline test score lands between the two
  (0 %: no better than random, 100 %: as good as knowing the hidden factors).
- *test (mean ± std over seeds)*: every seed trains its own LM (and CoLES), the fold models of each seed are
  scored on the fixed test clients, and the seed's score is their mean; the table shows the mean and the
  sample std of those per-seed scores. This std says nothing about the sampling of the few test clients:
  whether two rows differ is the gap table's verdict, not a comparison of these stds.
- *fold std*: the spread over the fold models within one seed (averaged over seeds): the noise of the
  downstream classifier alone, with the LM fixed.
- *val (out-of-fold)*: the metric on the out-of-fold predictions of all cross-validated (non-test) clients,
  each predicted by the fold model that did not train on it; mean ± std over seeds. A large gap to test hints
  at overfitting (or at the small test split's sampling error: see the gap table).
- Gap table: `a − b` is the headline metric of `a` minus that of `b`, averaged over the seeds, on the fixed test
  clients (the mean of the fold models' probabilities) and on val (out-of-fold). The interval is a paired
  bootstrap over clients (report.bootstrap.n resamples): each resample draws the clients with replacement, the
  same draw for both sets and every seed, and (report.bootstrap.seeds=resample, the default) the seeds with
  replacement, and takes the gap averaged over the drawn seeds; 2.5 / 97.5 percentiles. *better* / *worse*: the
  whole interval is above / below 0; *not distinguishable*: 0 is inside. The interval covers the sampling of
  clients and of training seeds (with 3 seeds a coarse estimate of the latter; `seeds=fixed`: the seeds run only,
  as averaged). A gap read off the table's means may
  differ slightly: those average the fold models' scores, the gap table scores their averaged probabilities.
- Loss plots: training loss (left) and eval loss on the held-out pretraining clients (right), one line per
  seed. Eval loss should fall and flatten; seeds should agree. The CoLES plot: its mean contrastive training
  loss per epoch, one line per seed; a curve still falling steeply at the end means CoLES is undertrained.
- Metric plots: bar = mean over seeds, error bar = std over seeds, dots = single seeds.
- `finetune:<run>` rows (when the finetune stage ran): the LM fine-tuned on the target per fold (early-stopped
  on the held-out fold), scored like the feature sets. Fine-tuning curves: train loss, held-out loss and the
  headline metric per fold; a best step near 0 means fine-tuning did not improve on its starting point.
"""


def gap_section(summary: dict[str, Any]) -> list[str]:
    boot = summary["bootstrap"]
    lines = [
        f"### Gaps ({100 * boot['level']:.0f} % paired bootstrap over clients"
        f"{' and seeds' if boot.get('seeds', 'resample') == 'resample' else ''}, {boot['n']} resamples, seeds "
        f"pooled: {', '.join(map(str, summary['gap_seeds'])) or 'none'})",
        "",
    ]
    if summary["seeds_without_predictions"]:
        lines += [
            f"Seeds without {PREDICTIONS} (validated before it existed; rerun validate): "
            f"{', '.join(map(str, summary['seeds_without_predictions']))}.",
            "",
        ]
    if not summary["gaps"]:
        return lines + ["No gap to state: no seed has predictions of both sides of a gap.", ""]
    for metric in summary["metrics"]:
        lines += gap_table(summary["gaps"], metric) + [""]
    return lines


def write_report(summaries: dict[str, dict[str, Any]], out: Path, experiment: str) -> None:
    from llm4trx.evaluation.plots import plot_coles_losses, plot_gaps, plot_learning_curves, plot_losses, plot_metrics

    lines = [f"# Report: experiment `{experiment}`", ""]
    for label, summary in summaries.items():
        lines += [f"## {summary['dataset']} ({summary['task']})", ""]
        lines += [f"Seeds: {', '.join(map(str, summary['seeds']))} — from `{summary['experiment_dir']}`."]
        heads = summary.get("heads", ["lightgbm"])
        if heads == ["lightgbm"]:
            lines += [f"LightGBM random_state: {summary['lightgbm_seed']}."]
        else:
            lines += [f"Downstream model (validate.head): {', '.join(heads)}, not the published LightGBM alone."]
        if summary["missing_seeds"]:
            lines += [f"Missing seeds (no {RESULTS}): {', '.join(map(str, summary['missing_seeds']))}."]
        lines += [""] + summary_table(summary) + [""]
        lines += [f"![metrics](metrics_{label}.png)", ""]
        plot_metrics(summary, out / f"metrics_{label}.png")
        lines += gap_section(summary)
        if summary["gaps"]:
            plot_gaps(summary, out / f"gaps_{label}.png")
            lines += [f"![gaps](gaps_{label}.png)", ""]
        if any(summary["losses"].values()):
            plot_losses(summary["losses"], summary["dataset"], out / f"loss_{label}.png")
            lines += [f"![loss curves](loss_{label}.png)", ""]
        else:
            lines += [f"No loss curves: no seed has {LOSSES}.", ""]
        if summary.get("coles_losses"):
            plot_coles_losses(summary["coles_losses"], summary["dataset"], out / f"coles_loss_{label}.png")
            lines += [f"![CoLES loss curves](coles_loss_{label}.png)", ""]
        if summary.get("finetune_curves"):
            plot_learning_curves(summary["finetune_curves"], summary["dataset"], out / f"finetune_{label}.png")
            lines += [
                "Fine-tuning (rows `finetune:<run>`): best step per fold (early stopping on the held-out fold's "
                f"{summary['headline']}):",
                "",
            ]
            for seed, by_run in summary["finetune_best_steps"].items():
                lines += [
                    f"- seed {seed}: "
                    + "; ".join(
                        f"{run} " + ", ".join(f"{fold}:{step}" for fold, step in folds.items())
                        for run, folds in by_run.items()
                    )
                ]
            lines += ["", f"![fine-tuning curves](finetune_{label}.png)", ""]
    lines += [HOW_TO_READ]
    (out / registry.file("report", "report")).write_text("\n".join(lines))
    tables = {
        label: {k: v for k, v in s.items() if k not in ("losses", "finetune_curves")} for label, s in summaries.items()
    }
    (out / registry.file("report", "tables")).write_text(
        json.dumps({"experiment": experiment, "datasets": tables}, indent=2) + "\n"
    )


def run(cfg: DictConfig) -> Path:
    seeds = [int(seed) for seed in (cfg.get("seeds") or [cfg.seed])]
    summaries: dict[str, dict[str, Any]] = {}
    for experiment_dir in cfg.report.experiment_dirs:
        summary = collect(cfg, Path(experiment_dir), seeds)
        label = summary["dataset"] if summary["dataset"] not in summaries else f"{summary['dataset']}_{len(summaries)}"
        summaries[label] = summary
    final = stage_dir(cfg, "report")
    with atomic_dir(final) as tmp:
        write_report(summaries, tmp, str(cfg.experiment_name))
    for summary in summaries.values():
        print(f"\n{summary['dataset']}: {len(summary['seeds'])} seeds")
        print("\n".join(summary_table(summary)))
    print(f"\nreport: {final / registry.file('report', 'report')}")
    return final


main = stage_main(run)

if __name__ == "__main__":
    main()
