"""What the `validate` and `baselines` stages share: the protocol's settings (LightGBM parameters, threads; read
from the config once by the stage into a `core.sections.ValidationSpec`), the seed-independent feature sets
(aggregates, oracle) and one loop that runs the protocol over several feature sets, collecting each one's summary
and per-client predictions."""

from __future__ import annotations

import dataclasses
import logging
import os

import pandas as pd
from tqdm.auto import tqdm

from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import DatasetSpec, ValidationSpec
from llm4trx.data.predictions import prediction_rows
from llm4trx.data.sequences import categorical_columns
from llm4trx.evaluation.features import aggregate_features, oracle_features
from llm4trx.evaluation.protocol import Head, Labels, Predictions, cross_validate_predict

log = logging.getLogger(__name__)


def lightgbm_params(v: ValidationSpec) -> dict:
    task = v.task
    if task not in v.lightgbm:
        raise ConfigError(f"validate.lightgbm has no parameters for dataset.task={task!r}")
    params = {**v.lightgbm[task], **v.lightgbm.get("common", {})}
    if v.lightgbm_seed == "run":  # one of SEED_MODES: core/schema.py
        params["random_state"] = int(v.seed)
    if task == "multiclass":
        params["num_class"] = int(v.n_classes)
    return params


def downstream_head(v: ValidationSpec) -> Head:
    """validate.head: LightGBM with lightgbm_params, or the linear probe with validate.logistic."""
    if v.head == "logistic":
        if v.logistic is None:
            raise ConfigError("validate.head=logistic needs validate.logistic: {Cs, cv, max_iter}")
        return Head("logistic", dataclasses.asdict(v.logistic))
    return Head("lightgbm", lightgbm_params(v))


def has_oracle(ds: DatasetSpec) -> bool:
    """The `oracle` feature set exists for generated data only (the generator's hidden factors)."""
    return ds.generator == "synthetic"


def validation_jobs(v: ValidationSpec) -> int:
    """validate.n_jobs, or (null) the threads this process was given: OMP_NUM_THREADS, else 2. Seeds run side
    by side each get a share of the cores; more LightGBM threads than that oversubscribe them (5x slower seen)."""
    if v.n_jobs is not None:
        return int(v.n_jobs)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return int(threads) if threads.isdigit() and int(threads) > 0 else 2


def seed_independent_sets(ds: DatasetSpec, random_dim: int | None) -> list[str]:
    """The feature sets the `baselines` stage builds once per dataset: aggregates, oracle on generated data, and
    the random floor when its width is given (validate.random_dim; null: the llm's width, known per run only)."""
    return ["aggregates"] + (["oracle"] if has_oracle(ds) else []) + (["random"] if random_dim is not None else [])


def aggregate_columns(v: ValidationSpec) -> list[str]:
    """The events' columns the aggregates feature set reads (the others are not loaded)."""
    agg = v.aggregates
    return ["client_id", "event_time", *categorical_columns(agg["categorical"], v.categorical), *agg["numeric"]]


def aggregates(v: ValidationSpec, events: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """The aggregates feature set; category vocabularies fitted on the pretraining clients (train + val)."""
    pretrain_ids = splits.loc[splits["split"].isin(["train", "val"]), "client_id"]
    return aggregate_features(
        events,
        categorical_columns(v.aggregates["categorical"], v.categorical),
        list(v.aggregates["numeric"]),
        pretrain_ids,
        sizes=v.aggregates.get("sizes"),
    )


def oracle(ds: DatasetSpec) -> pd.DataFrame:
    from llm4trx.data.synthetic import ensure_raw

    ensure_raw(ds)  # adds the factors file to raw files generated before it existed
    return oracle_features(ds.raw_dir, ds.id_column)


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
    v: ValidationSpec, sets: dict[str, pd.DataFrame], sources: dict, labels: Labels, desc: str = "validate"
) -> tuple[dict, dict]:
    """The protocol on every set: ({name: {n_features, metric summaries}}, {name: prediction frame})."""
    metrics, head, n_jobs = list(v.metrics), downstream_head(v), validation_jobs(v)
    n_folds = len(set(labels.folds))
    entries, frames = {}, {}
    with tqdm(total=len(sets) * n_folds, desc=desc, unit="fold", disable=not v.progress) as bar:
        for name, features in sets.items():
            bar.set_postfix_str(name)
            entry, predictions = cross_validate_predict(
                name, features, labels, metrics, head, n_jobs, sources[name], on_fold=bar.update
            )
            entries[name] = {"n_features": int(features.shape[1]), **entry}
            frames[name] = predictions_frame(name, labels, predictions)
            log_entry(name, entry, metrics[0])
    return entries, frames
