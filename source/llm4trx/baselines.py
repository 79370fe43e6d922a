"""Stage `baselines`: the seed-independent feature sets, built and validated once per dataset.

`aggregates` (ptls's aggregate statistics of each client's events), on generated data `oracle` (the
generator's hidden factors), and `random` when validate.random_dim gives its width (noise drawn once, with
evaluation.features.SHARED_RANDOM_SEED) do not depend on the run seed, and with validate.lightgbm_seed=fixed
(the default, as ptls-experiments) neither do their LightGBM models: every seed's validate would recompute the
same rows. This stage computes them once (shared by every seed of the experiment, hashed and skipped like any stage) and writes
to baselines/:
  aggregates.parquet, oracle.parquet,  the features
  random.parquet                       (the embeddings contract: id column, then emb_* columns),
                                       for validate's concatenations (llm+aggregates)
  results.json, results.md             their protocol results, in validation/results.json's shape
  predictions.parquet                  their per-client predictions (llm4trx.data.predictions)
Every seed's validate copies these rows. With validate.lightgbm_seed=run the stage is not in the pipeline and
validate builds the sets itself, per seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from llm4trx.core.cli import stage_main
from llm4trx.core.errors import ConfigError
from llm4trx.core.registry import shared_baselines
from llm4trx.core.sections import DatasetSpec, ValidationSpec
from llm4trx.core.stage import require, run_stage
from llm4trx.data.embeddings import embeddings_frame, features_path, write_embeddings
from llm4trx.data.chunks import events_path, read_events
from llm4trx.data.results import results_line, write_results
from llm4trx.data.splits import load_labels, read_splits
from llm4trx.evaluation.features import SHARED_RANDOM_SEED, random_features
from llm4trx.evaluation.tables import results_table
from llm4trx.evaluation.validation import (
    aggregate_columns,
    aggregates,
    lightgbm_params,
    oracle,
    seed_independent_sets,
    validate_sets,
)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    v, ds = ValidationSpec.from_config(cfg), DatasetSpec.from_config(cfg.dataset)
    if v.lightgbm_seed != "fixed":
        raise ConfigError(
            "the baselines stage needs validate.lightgbm_seed=fixed; with lightgbm_seed=run the "
            "aggregates and oracle depend on the seed and validate builds them per seed"
        )
    if not shared_baselines(cfg):
        log.info("baselines: no seed-independent feature set in validate.feature_sets or concatenations")

    def build(tmp: Path) -> dict:
        data = require(cfg, "prepare")
        labels = load_labels(data, int(cfg.splits.n_folds))
        names = seed_independent_sets(ds, v.random_dim)
        sets, sources = {}, {}
        splits = read_splits(data, ("client_id", "split"))
        if "aggregates" in names:
            sets["aggregates"] = aggregates(v, read_events(data, aggregate_columns(v)), splits)
            sources["aggregates"] = events_path(data)
        if "random" in names:
            sets["random"] = random_features(splits["client_id"], int(v.random_dim), SHARED_RANDOM_SEED)
            sources["random"] = f"random features ({v.random_dim} wide)"
        if "oracle" in names:
            sets["oracle"] = oracle(ds)
            sources["oracle"] = f"{cfg.dataset.raw_dir} (hidden factors)"
        entries, frames = validate_sets(v, sets, sources, labels, desc="baselines")
        for name, features in sets.items():
            frame = embeddings_frame(cfg.dataset.id_column, features.index.to_numpy(), features.to_numpy())
            write_embeddings(features_path(tmp, name), frame)
        params = lightgbm_params(v)
        results = {
            "dataset": cfg.dataset.name,
            "task": cfg.dataset.task,
            "metrics": list(cfg.dataset.metrics),
            "lightgbm_seed": {"mode": "fixed", "random_state": params.get("random_state")},
            "head": v.head,
            "n_folds": len(set(labels.folds)),
            "n_train": len(labels.train_ids),
            "n_test": len(labels.test_ids),
            "feature_sets": entries,
        }
        write_results(tmp, "baselines", results, results_table(results), list(frames.values()))
        return {"feature_sets": list(entries), "n_train": results["n_train"], "n_test": results["n_test"]}

    return run_stage(cfg, "baselines", build)


main = stage_main(run, results_line("baselines"))

if __name__ == "__main__":
    main()
