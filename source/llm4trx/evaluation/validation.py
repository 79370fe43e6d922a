"""What the `validate` and `baselines` stages share: the protocol's settings read from the config (LightGBM
parameters, threads), the seed-independent feature sets (aggregates, oracle) and one loop that runs the protocol
over several feature sets, collecting each one's summary and per-client predictions."""

from __future__ import annotations

import logging
import os

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from llm4trx.core.errors import ConfigError
from llm4trx.data.predictions import prediction_rows
from llm4trx.data.sequences import categorical_columns
from llm4trx.evaluation.features import aggregate_features, oracle_features
from llm4trx.evaluation.protocol import Labels, Predictions, cross_validate_predict

log = logging.getLogger(__name__)


def lightgbm_seed_mode(cfg: DictConfig) -> str:
    return cfg.validate.get("lightgbm_seed", "fixed")  # one of SEED_MODES: core/schema.py


def lightgbm_params(cfg: DictConfig) -> dict:
    v = cfg.validate
    task = cfg.dataset.task
    if task not in v.lightgbm:
        raise ConfigError(f"validate.lightgbm has no parameters for dataset.task={task!r}")
    params = {
        **OmegaConf.to_container(v.lightgbm[task], resolve=True),
        **OmegaConf.to_container(v.lightgbm.get("common", {}), resolve=True),
    }
    if lightgbm_seed_mode(cfg) == "run":
        params["random_state"] = int(cfg.seed)
    if task == "multiclass":
        params["num_class"] = int(cfg.dataset.n_classes)
    return params


def has_oracle(cfg: DictConfig) -> bool:
    """The `oracle` feature set exists for generated data only (the generator's hidden factors)."""
    return cfg.dataset.get("generator") == "synthetic"


def validation_jobs(cfg: DictConfig) -> int:
    """validate.n_jobs, or (null) the threads this process was given: OMP_NUM_THREADS, else 2. Seeds run side
    by side each get a share of the cores; more LightGBM threads than that oversubscribe them (5x slower seen)."""
    if cfg.validate.get("n_jobs") is not None:
        return int(cfg.validate.n_jobs)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return int(threads) if threads.isdigit() and int(threads) > 0 else 2


def seed_independent_sets(cfg: DictConfig) -> list[str]:
    """The feature sets the `baselines` stage builds once per dataset: aggregates, and oracle on generated data."""
    return ["aggregates"] + (["oracle"] if has_oracle(cfg) else [])


def aggregate_columns(cfg: DictConfig) -> list[str]:
    """The events' columns the aggregates feature set reads (the others are not loaded)."""
    agg = cfg.validate.aggregates
    return ["client_id", "event_time", *categorical_columns(agg.categorical, cfg.dataset.categorical), *agg.numeric]


def aggregates(cfg: DictConfig, events: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """The aggregates feature set; category vocabularies fitted on the pretraining clients (train + val)."""
    pretrain_ids = splits.loc[splits["split"].isin(["train", "val"]), "client_id"]
    return aggregate_features(
        events,
        categorical_columns(cfg.validate.aggregates.categorical, cfg.dataset.categorical),
        list(cfg.validate.aggregates.numeric),
        pretrain_ids,
        sizes=cfg.validate.aggregates.get("sizes"),
    )


def oracle(cfg: DictConfig) -> pd.DataFrame:
    from llm4trx.data.synthetic import ensure_raw

    ensure_raw(cfg.dataset)  # adds the factors file to raw files generated before it existed
    return oracle_features(cfg.dataset.raw_dir, cfg.dataset.id_column)


def predictions_frame(name: str, labels: Labels, predictions: Predictions) -> pd.DataFrame:
    return prediction_rows(
        name,
        predictions.classes,
        labels.train_ids,
        labels.train_y,
        labels.folds,
        predictions.val,
        labels.test_ids,
        labels.test_y,
        predictions.test,
    )


def log_entry(name: str, entry: dict, metric: str) -> None:
    head = entry[metric]
    log.info(
        "%s: %s val %.4f ± %.4f (out-of-fold %.4f), test %.4f ± %.4f",
        name,
        metric,
        head["val_mean"],
        head["val_std"],
        head["val_oof"],
        head["test_mean"],
        head["test_std"],
    )


def validate_sets(
    cfg: DictConfig, sets: dict[str, pd.DataFrame], sources: dict, labels: Labels, desc: str = "validate"
) -> tuple[dict, dict]:
    """The protocol on every set: ({name: {n_features, metric summaries}}, {name: prediction frame})."""
    metrics, params, n_jobs = list(cfg.dataset.metrics), lightgbm_params(cfg), validation_jobs(cfg)
    n_folds = len(set(labels.folds))
    entries, frames = {}, {}
    with tqdm(total=len(sets) * n_folds, desc=desc, unit="fold", disable=not cfg.progress) as bar:
        for name, features in sets.items():
            bar.set_postfix_str(name)
            entry, predictions = cross_validate_predict(
                name, features, labels, metrics, params, n_jobs, sources[name], on_fold=bar.update
            )
            entries[name] = {"n_features": int(features.shape[1]), **entry}
            frames[name] = predictions_frame(name, labels, predictions)
            log_entry(name, entry, metrics[0])
    return entries, frames
