"""Stage `finetune` (optional): supervised fine-tuning of the LM on the target, under the validation protocol.

For each fold of data/splits.parquet: train on the labeled clients of the other folds, early-stop on the
held-out fold (headline metric), predict the held-out fold and the fixed test clients (whose labels this stage
never reads). Every run of `finetune.runs` (conf/finetune/): `head` (classification head on pooled hidden
states; LoRA or full) or `verbalizer` (label words' next-token logits; LoRA). The model is this run's exported
hf/ or `finetune.model=/local/hf/dir`. Writes finetune/predictions.parquet (run, fold, part, client_id,
p_0..) and finetune/curves.json (learning curves and the best step per fold); validate scores the predictions
as rows `finetune:<run>`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from tqdm.auto import tqdm

from llm4trx.core.cli import stage_main
from llm4trx.core.errors import ConfigError
from llm4trx.core.registry import finetune_configured
from llm4trx.core.sections import FinetuneRunSpec
from llm4trx.core.stage import require, run_stage
from llm4trx.lm.supervised import check_config, fine_tune, prepare

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    if not finetune_configured(cfg):
        raise ConfigError("no finetune config: choose one, e.g. `finetune=default` or experiment=smoke_finetune")
    spec = FinetuneRunSpec.from_config(cfg)
    check_config(spec)
    model_dir = Path(cfg.finetune.model) if cfg.finetune.model else require(cfg, "export")
    # Every input check (model dir, LoRA targets, label words, targets, folds, texts) before anything is built.
    prep = prepare(spec, model_dir, require(cfg, "prepare"), require(cfg, "text"))

    def build(tmp: Path) -> dict:
        total = len(cfg.finetune.runs) * len(set(prep.protocol.folds.tolist()))
        with tqdm(total=total, desc="finetune", unit="fold", disable=not cfg.progress) as bar:
            return fine_tune(spec, prep, tmp, progress=bar.update)

    return run_stage(cfg, "finetune", build)


main = stage_main(run)

if __name__ == "__main__":
    main()
