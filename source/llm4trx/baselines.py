"""Stage `baselines`: the seed-independent feature sets, built and validated once per dataset.

`aggregates` (ptls's aggregate statistics of each client's events) and, on generated data, `oracle` (the
generator's hidden factors) do not depend on the run seed, and with validate.lightgbm_seed=fixed (the default,
as ptls-experiments) neither do their LightGBM models: every seed's validate would recompute the same rows. This
stage computes them once (shared by every seed of the experiment, hashed and skipped like any stage) and writes
to baselines/:
  aggregates.parquet, oracle.parquet   the features (the embeddings contract: id column, then emb_* columns),
                                       for validate's concatenations (llm+aggregates)
  results.json, results.md             their protocol results, in validation/results.json's shape
  predictions.parquet                  their per-client predictions (llm4trx.data.predictions)
Every seed's validate copies these rows. With validate.lightgbm_seed=run the stage is not in the pipeline and
validate builds the sets itself, per seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from llm4trx.core.cli import stage_main
from llm4trx.core.errors import ConfigError
from llm4trx.core.registry import shared_baselines
from llm4trx.core.stage import require, run_stage
from llm4trx.data.embeddings import embeddings_frame
from llm4trx.data.predictions import write_predictions
from llm4trx.evaluation.protocol import load_labels
from llm4trx.evaluation.tables import results_table
from llm4trx.evaluation.validation import (
    aggregates,
    lightgbm_params,
    lightgbm_seed_mode,
    oracle,
    seed_independent_sets,
    validate_sets,
)

log = logging.getLogger(__name__)

RESULTS, PREDICTIONS, FEATURES = "results.json", "predictions.parquet", "{name}.parquet"


def run(cfg: DictConfig) -> Path:
    if lightgbm_seed_mode(cfg) != "fixed":
        raise ConfigError(
            "the baselines stage needs validate.lightgbm_seed=fixed; with lightgbm_seed=run the "
            "aggregates and oracle depend on the seed and validate builds them per seed"
        )
    if not shared_baselines(cfg):
        log.info("baselines: no seed-independent feature set in validate.feature_sets or concatenations")

    def build(tmp: Path) -> dict:
        data = require(cfg, "prepare")
        labels = load_labels(data, int(cfg.splits.n_folds))
        names = seed_independent_sets(cfg)
        sets, sources = {}, {}
        if "aggregates" in names:
            splits = pd.read_parquet(data / "splits.parquet")
            sets["aggregates"] = aggregates(cfg, pd.read_parquet(data / "events.parquet"), splits)
            sources["aggregates"] = data / "events.parquet"
        if "oracle" in names:
            sets["oracle"] = oracle(cfg)
            sources["oracle"] = f"{cfg.dataset.raw_dir} (hidden factors)"
        entries, frames = validate_sets(cfg, sets, sources, labels, desc="baselines")
        for name, features in sets.items():
            frame = embeddings_frame(cfg.dataset.id_column, features.index.to_numpy(), features.to_numpy())
            frame.to_parquet(tmp / FEATURES.format(name=name), index=False)
        params = lightgbm_params(cfg)
        results = {
            "dataset": cfg.dataset.name,
            "task": cfg.dataset.task,
            "metrics": list(cfg.dataset.metrics),
            "lightgbm_seed": {"mode": "fixed", "random_state": params.get("random_state")},
            "n_folds": len(set(labels.folds)),
            "n_train": len(labels.train_ids),
            "n_test": len(labels.test_ids),
            "feature_sets": entries,
        }
        (tmp / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "results.md").write_text(results_table(results))
        write_predictions(list(frames.values()), tmp / PREDICTIONS)
        return {"feature_sets": list(entries), "n_train": results["n_train"], "n_test": results["n_test"]}

    return run_stage(cfg, "baselines", build)


main = stage_main(run)

if __name__ == "__main__":
    main()
