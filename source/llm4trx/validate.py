"""Stage `validate`: LLM embeddings against aggregates, CoLES and random under the ptls protocol.

Reads data/ (targets, splits, events), embeddings/ (when `llm` is used) and coles/ (when `coles` is used;
run `python -m llm4trx.coles` first; scripts/run.sh does) and finetune/ (when a finetune config is chosen: its
predictions become rows `finetune:<run>`, scored with the same metrics). Writes validation/results.json,
validation/results.md and validation/predictions.parquet (every feature set's out-of-fold val and fold-mean test
probabilities per client; the report's bootstrap intervals are computed from it).
With validate.lightgbm_seed=fixed (the default) the seed-independent sets (aggregates, oracle, and random when
validate.random_dim is set) come from the `baselines` stage, built and validated once per dataset: their rows,
predictions and (for concatenations) features are copied from baselines/; with lightgbm_seed=run they depend on the seed and are validated here.
A feature set whose stage finished without features (CoLES when too few clients are long enough, see
llm4trx.coles) is left out, with the concatenations using it; `skipped` in results.json and a line under the
table in results.md give the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from llm4trx.core import registry
from llm4trx.core.cli import stage_main
from llm4trx.core.errors import ConfigError, DataError
from llm4trx.core.registry import finetune_configured
from llm4trx.core.sections import DatasetSpec, ValidationSpec
from llm4trx.core.stage import read_success, require, run_stage
from llm4trx.data.chunks import events_path, read_events
from llm4trx.data.embeddings import embeddings_path, features_path, read_embeddings
from llm4trx.data.splits import load_labels, read_splits
from llm4trx.data.results import (
    results_line,
    predictions_path,
    read_results,
    read_stage_predictions,
    results_path,
    write_results,
)
from llm4trx.evaluation.features import concatenate, parts_of, random_features, random_width_mismatch
from llm4trx.evaluation.finetuned import score_predictions
from llm4trx.evaluation.tables import results_table
from llm4trx.evaluation.validation import (
    aggregate_columns,
    aggregates,
    has_oracle,
    lightgbm_params,
    log_entry,
    oracle,
    predictions_frame,
    seed_independent_sets,
    validate_sets,
)

log = logging.getLogger(__name__)

BASE_SETS = ("llm", "aggregates", "coles", "random", "oracle")


def check_config(cfg: DictConfig) -> set[str]:
    v = cfg.validate
    needed = parts_of(v.feature_sets, v.concatenations)
    unknown = sorted(needed - set(BASE_SETS))
    if unknown:
        raise ConfigError(f"validate.concatenations use unknown feature sets {unknown}; choose from {BASE_SETS}")
    if "random" in needed and v.random_dim is None and "llm" not in needed:
        raise ConfigError("validate.random_dim is null (llm width) but llm is not validated; set a width")
    lightgbm_params(ValidationSpec.from_config(cfg))
    if "oracle" in needed and not has_oracle(DatasetSpec.from_config(cfg.dataset)):
        if any("oracle" in name.split("+") for name in v.concatenations or []):
            raise ConfigError("validate.concatenations use oracle, which exists for dataset=synthetic only")
        log.warning(
            "validate: feature set oracle skipped: dataset %s has no hidden factors (synthetic only)", cfg.dataset.name
        )
        needed.discard("oracle")
    return needed


def skipped_sets(cfg: DictConfig, needed: set[str]) -> dict[str, str]:
    """{feature set: reason} for the sets whose stage finished without features, and the concatenations of them."""
    skipped = {}
    if "coles" in needed:
        reason = (read_success(require(cfg, "coles")) or {}).get("counts", {}).get("skipped")
        if reason:
            skipped["coles"] = f"CoLES skipped: {reason}"
    for name in cfg.validate.concatenations or []:
        parts = [p for p in name.split("+") if p in skipped]
        if parts:
            skipped[name] = f"uses {', '.join(parts)} (skipped)"
    return skipped


def build_feature_sets(
    cfg: DictConfig,
    needed: set[str],
    data: Path,
    skipped: dict[str, str] | None = None,
    prebuilt: dict[str, tuple[pd.DataFrame, Path]] | None = None,
) -> tuple[dict, dict]:
    """{name: frame indexed by client id} and {name: source path for error messages}. `prebuilt`: {name:
    (features, source)} of sets built elsewhere (the baselines stage)."""
    sets, sources = {}, {}
    skipped = skipped or {}
    for name, (features, source) in (prebuilt or {}).items():
        if name in needed:
            sets[name], sources[name] = features, source
    needed = needed - set(skipped) - set(sets)
    id_column = cfg.dataset.id_column
    if "llm" in needed:
        path = embeddings_path(require(cfg, "embed"), "embed")
        sets["llm"], sources["llm"] = read_embeddings(path, id_column, "llm"), path
    if "coles" in needed:
        path = embeddings_path(require(cfg, "coles"), "coles")
        sets["coles"], sources["coles"] = read_embeddings(path, id_column, "coles"), path
    splits = read_splits(data, ("client_id", "split")) if needed & {"aggregates", "random"} else None
    if "aggregates" in needed:
        v = ValidationSpec.from_config(cfg)
        sets["aggregates"] = aggregates(v, read_events(data, aggregate_columns(v)), splits)
        sources["aggregates"] = events_path(data)
    if "random" in needed:
        dim = cfg.validate.random_dim or sets["llm"].shape[1]
        sets["random"] = random_features(splits["client_id"], int(dim), int(cfg.seed))
        sources["random"] = "random features"
    if "oracle" in needed:
        sets["oracle"] = oracle(DatasetSpec.from_config(cfg.dataset))
        sources["oracle"] = f"{cfg.dataset.raw_dir} (hidden factors)"
    for name in cfg.validate.concatenations or []:
        if name in skipped:
            continue
        sets[name] = concatenate(name, sets)
        sources[name] = " + ".join(str(sources[p]) for p in name.split("+"))
    order = [n for n in cfg.validate.feature_sets if n in sets]
    order += [n for n in cfg.validate.concatenations or [] if n not in skipped]
    return {n: sets[n] for n in order}, sources


def read_baselines(cfg: DictConfig, needed: set[str]) -> tuple[dict, dict, pd.DataFrame]:
    """From baselines/: {name: (features, source)}, {name: results entry} and the prediction rows of the
    seed-independent sets this run needs."""
    folder = require(cfg, "baselines")
    results = read_results(folder, "baselines")
    sets = seed_independent_sets(DatasetSpec.from_config(cfg.dataset), cfg.validate.get("random_dim"))
    names = [n for n in sets if n in needed]
    features, entries = {}, {}
    for name in names:
        if name not in results["feature_sets"]:
            raise DataError(
                results_path(folder, "baselines"),
                f"no feature set {name!r}; rebuild with python -m llm4trx.baselines force=true",
            )
        path = features_path(folder, name)
        features[name] = (read_embeddings(path, cfg.dataset.id_column, name), path)
        entries[name] = results["feature_sets"][name]
    predictions = read_stage_predictions(folder, "baselines")
    return features, entries, predictions[predictions["feature_set"].isin(names)]


def run(cfg: DictConfig) -> Path:
    needed = check_config(cfg)

    def build(tmp: Path) -> dict:
        data = require(cfg, "prepare")
        labels = load_labels(data, int(cfg.splits.n_folds))
        skipped = skipped_sets(cfg, needed)
        prebuilt, reused, reused_rows = {}, {}, None
        if registry.shared_baselines(cfg):
            prebuilt, reused, reused_rows = read_baselines(cfg, needed)
        sets, sources = build_feature_sets(cfg, needed, data, skipped, prebuilt)
        if "llm" in sets and "random" in sets:
            mismatch = random_width_mismatch(sets["llm"].shape[1], sets["random"].shape[1])
            if mismatch:
                log.warning("validate: %s", mismatch)
        v = ValidationSpec.from_config(cfg)
        metrics = list(cfg.dataset.metrics)
        params = lightgbm_params(v)
        n_folds = len(set(labels.folds))
        results = {
            "dataset": cfg.dataset.name,
            "task": cfg.dataset.task,
            "metrics": metrics,
            "seed": int(cfg.seed),
            "lightgbm_seed": {"mode": v.lightgbm_seed, "random_state": params.get("random_state")},
            "head": v.head,
            "n_folds": n_folds,
            "n_train": len(labels.train_ids),
            "n_test": len(labels.test_ids),
            "feature_sets": {},
            "skipped": skipped,
            "from_baselines": [n for n in sets if n in reused],
        }
        entries, frames = validate_sets(v, {n: f for n, f in sets.items() if n not in reused}, sources, labels)
        for name in reused:
            if name in sets:
                log_entry(f"{name} (from baselines/)", reused[name], metrics[0])
                frames[name] = reused_rows[reused_rows["feature_set"] == name]
        # An applied model's row is llm:<name> (embed.model; see data/model_record.row_name), in concatenations too.
        llm = (
            (read_success(require(cfg, "embed")) or {}).get("counts", {}).get("row_name", "llm")
            if "llm" in needed
            else "llm"
        )
        rows = {name: "+".join(llm if part == "llm" else part for part in name.split("+")) for name in sets}
        results["feature_sets"] = {rows[name]: entries.get(name) or reused[name] for name in sets}
        frames = {
            rows.get(name, name): frame.assign(feature_set=rows.get(name, name)) for name, frame in frames.items()
        }
        if finetune_configured(cfg):  # rows finetune:<run>: fine-tuned models' predictions, the same metrics
            predictions = predictions_path(require(cfg, "finetune"), "finetune")
            for run in cfg.finetune.runs:
                entry, scored = score_predictions(predictions, str(run), labels, metrics, int(cfg.dataset.n_classes))
                results["feature_sets"][f"finetune:{run}"] = {"n_features": int(cfg.dataset.n_classes), **entry}
                frames[f"finetune:{run}"] = predictions_frame(f"finetune:{run}", labels, scored)
                log_entry(f"finetune:{run}", entry, metrics[0])
        table = results_table(results)
        if skipped:
            table += "\n" + "".join(f"Skipped: {name}: {reason}.\n" for name, reason in skipped.items())
        write_results(tmp, "validate", results, table, [frames[name] for name in results["feature_sets"]])
        return {
            "feature_sets": list(results["feature_sets"]),
            "skipped": list(skipped),
            "from_baselines": results["from_baselines"],
            "n_train": results["n_train"],
            "n_test": results["n_test"],
        }

    return run_stage(cfg, "validate", build)


main = stage_main(run, results_line("validate"))

if __name__ == "__main__":
    main()
