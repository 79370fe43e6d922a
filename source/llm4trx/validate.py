"""Stage `validate`: LLM embeddings against aggregates, CoLES and random under the ptls protocol.

Reads data/ (targets, splits, events), embeddings/ (when `llm` is used) and coles/ (when `coles` is used;
run `python -m llm4trx.coles` first; scripts/run.sh does) and finetune/ (when a finetune config is chosen: its
predictions become rows `finetune:<run>`, scored with the same metrics). Writes validation/results.json and validation/results.md.
A feature set whose stage finished without features (CoLES when too few clients are long enough, see
llm4trx.coles) is left out, with the concatenations using it; `skipped` in results.json and a line under the
table in results.md give the reason.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from llm4trx.core.cli import stage_main
from llm4trx.core.errors import ConfigError
from llm4trx.data.embeddings import read_embeddings
from llm4trx.data.sequences import categorical_columns
from llm4trx.evaluation.features import aggregate_features, concatenate, oracle_features, parts_of, random_features
from llm4trx.evaluation.protocol import cross_validate, load_labels
from llm4trx.evaluation.tables import results_table
from llm4trx.core.registry import finetune_configured
from llm4trx.core.stage import read_success, require, run_stage
from llm4trx.evaluation.finetuned import score_predictions

log = logging.getLogger(__name__)

BASE_SETS = ("llm", "aggregates", "coles", "random", "oracle")
SEED_MODES = ("fixed", "run")


def lightgbm_seed_mode(cfg: DictConfig) -> str:
    mode = cfg.validate.get("lightgbm_seed", "fixed")
    if mode not in SEED_MODES:
        raise ConfigError(f"validate.lightgbm_seed={mode!r} unknown; choose from {SEED_MODES} "
                          "(fixed: lightgbm.common.random_state, as ptls-experiments; run: the run's seed)")
    return mode


def lightgbm_params(cfg: DictConfig) -> dict:
    v = cfg.validate
    task = cfg.dataset.task
    if task not in v.lightgbm:
        raise ConfigError(f"validate.lightgbm has no parameters for dataset.task={task!r}")
    params = {**OmegaConf.to_container(v.lightgbm[task], resolve=True),
              **OmegaConf.to_container(v.lightgbm.get("common", {}), resolve=True)}
    if lightgbm_seed_mode(cfg) == "run":
        params["random_state"] = int(cfg.seed)
    if task == "multiclass":
        params["num_class"] = int(cfg.dataset.n_classes)
    return params


def has_oracle(cfg: DictConfig) -> bool:
    """The `oracle` feature set exists for generated data only (the generator's hidden factors)."""
    return cfg.dataset.get("generator") == "synthetic"


def check_config(cfg: DictConfig) -> set[str]:
    v = cfg.validate
    unknown = [s for s in v.feature_sets if s not in BASE_SETS]
    if unknown:
        raise ConfigError(f"validate.feature_sets {unknown} unknown; choose from {BASE_SETS}")
    needed = parts_of(v)
    unknown = sorted(needed - set(BASE_SETS))
    if unknown:
        raise ConfigError(f"validate.concatenations use unknown feature sets {unknown}; choose from {BASE_SETS}")
    if "random" in needed and v.random_dim is None and "llm" not in needed:
        raise ConfigError("validate.random_dim is null (llm width) but llm is not validated; set a width")
    lightgbm_params(cfg)
    if "oracle" in needed and not has_oracle(cfg):
        if any("oracle" in name.split("+") for name in v.concatenations or []):
            raise ConfigError("validate.concatenations use oracle, which exists for dataset=synthetic only")
        log.warning("validate: feature set oracle skipped: dataset %s has no hidden factors (synthetic only)",
                    cfg.dataset.name)
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


def build_feature_sets(cfg: DictConfig, needed: set[str], data: Path,
                       skipped: dict[str, str] | None = None) -> tuple[dict, dict]:
    """{name: frame indexed by client id} and {name: source path for error messages}."""
    sets, sources = {}, {}
    skipped = skipped or {}
    needed = needed - set(skipped)
    id_column = cfg.dataset.id_column
    if "llm" in needed:
        path = require(cfg, "embed") / "embeddings.parquet"
        sets["llm"], sources["llm"] = read_embeddings(path, id_column, "llm"), path
    if "coles" in needed:
        path = require(cfg, "coles") / "embeddings.parquet"
        sets["coles"], sources["coles"] = read_embeddings(path, id_column, "coles"), path
    splits = pd.read_parquet(data / "splits.parquet")
    if "aggregates" in needed:
        events = pd.read_parquet(data / "events.parquet")
        pretrain_ids = splits.loc[splits["split"].isin(["train", "val"]), "client_id"]
        sets["aggregates"] = aggregate_features(events, categorical_columns(cfg.validate.aggregates.categorical, cfg.dataset.categorical),
                                                list(cfg.validate.aggregates.numeric), pretrain_ids,
                                                sizes=cfg.validate.aggregates.get("sizes"))
        sources["aggregates"] = data / "events.parquet"
    if "random" in needed:
        dim = cfg.validate.random_dim or sets["llm"].shape[1]
        sets["random"] = random_features(splits["client_id"], int(dim), int(cfg.seed))
        sources["random"] = "random features"
    if "oracle" in needed:
        from llm4trx.data.synthetic import ensure_raw

        ensure_raw(cfg.dataset)  # adds the factors file to raw files generated before it existed
        sets["oracle"] = oracle_features(cfg.dataset.raw_dir, cfg.dataset.id_column)
        sources["oracle"] = f"{cfg.dataset.raw_dir} (hidden factors)"
    for name in cfg.validate.concatenations or []:
        if name in skipped:
            continue
        sets[name] = concatenate(name, sets)
        sources[name] = " + ".join(str(sources[p]) for p in name.split("+"))
    order = [n for n in cfg.validate.feature_sets if n in sets]
    order += [n for n in cfg.validate.concatenations or [] if n not in skipped]
    return {n: sets[n] for n in order}, sources


def validation_jobs(cfg: DictConfig) -> int:
    """validate.n_jobs, or (null) the threads this process was given: OMP_NUM_THREADS, else 2. Seeds run side
    by side each get a share of the cores; more LightGBM threads than that oversubscribe them (5x slower seen)."""
    if cfg.validate.get("n_jobs") is not None:
        return int(cfg.validate.n_jobs)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return int(threads) if threads.isdigit() and int(threads) > 0 else 2


def run(cfg: DictConfig) -> Path:
    needed = check_config(cfg)

    def build(tmp: Path) -> dict:
        data = require(cfg, "prepare")
        labels = load_labels(data, int(cfg.splits.n_folds))
        skipped = skipped_sets(cfg, needed)
        sets, sources = build_feature_sets(cfg, needed, data, skipped)
        metrics = list(cfg.dataset.metrics)
        params = lightgbm_params(cfg)
        n_folds = len(set(labels.folds))
        results = {"dataset": cfg.dataset.name, "task": cfg.dataset.task, "metrics": metrics, "seed": int(cfg.seed),
                   "lightgbm_seed": {"mode": lightgbm_seed_mode(cfg), "random_state": params.get("random_state")},
                   "n_folds": n_folds, "n_train": len(labels.train_ids), "n_test": len(labels.test_ids),
                   "feature_sets": {}, "skipped": skipped}
        with tqdm(total=len(sets) * n_folds, desc="validate", unit="fold", disable=not cfg.progress) as bar:
            for name, features in sets.items():
                bar.set_postfix_str(name)
                entry = cross_validate(name, features, labels, metrics, params, validation_jobs(cfg),
                                       sources[name], on_fold=bar.update)
                results["feature_sets"][name] = {"n_features": int(features.shape[1]), **entry}
                head = entry[metrics[0]]
                log.info("%s: %s val %.4f ± %.4f, test %.4f ± %.4f", name, metrics[0], head["val_mean"],
                         head["val_std"], head["test_mean"], head["test_std"])
        if finetune_configured(cfg):  # rows finetune:<run>: fine-tuned models' predictions, the same metrics
            predictions = require(cfg, "finetune") / "predictions.parquet"
            for run in cfg.finetune.runs:
                entry = score_predictions(predictions, str(run), labels, metrics, int(cfg.dataset.n_classes))
                results["feature_sets"][f"finetune:{run}"] = {"n_features": int(cfg.dataset.n_classes), **entry}
                head = entry[metrics[0]]
                log.info("finetune:%s: %s val %.4f ± %.4f, test %.4f ± %.4f", run, metrics[0], head["val_mean"],
                         head["val_std"], head["test_mean"], head["test_std"])
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        table = results_table(results)
        if skipped:
            table += "\n" + "".join(f"Skipped: {name}: {reason}.\n" for name, reason in skipped.items())
        (tmp / "results.md").write_text(table)
        return {"feature_sets": list(sets), "skipped": list(skipped), "n_train": results["n_train"],
                "n_test": results["n_test"]}

    return run_stage(cfg, "validate", build)


main = stage_main(run)

if __name__ == "__main__":
    main()
