"""Stage `coles`: the CoLES baseline (pytorch-lifestream `ptls.frames.coles`).

A GRU or LSTM sequence encoder (the model: evaluation/coles_model.py, every key of conf/coles/) is trained contrastively on the pretraining clients (train + val splits of
data/splits.parquet, never test), then embeds every client: coles/embeddings.parquet
(<dataset.id_column> string, emb_0000.. float32, the contract of embeddings/) and coles/losses.jsonl (the mean
training loss of every epoch, {"epoch", "loss"}: the report draws it). Depends on data/ and the
seed only, so it may run beside pretraining; scripts/run.sh runs it before `validate` when `coles` is one of
the validated feature sets.

Short histories: CoLES trains only on the pretraining clients with at least `coles.min_seq_len` transactions
(the count left out is `too_short` in coles/_SUCCESS.json and on the console) and still embeds every client.
When fewer than MIN_TRAIN_CLIENTS qualify (e.g. the 100-client age_pred sample: 10 transactions each), the
stage finishes with no embeddings and `skipped` (the reason) in its _SUCCESS.json; `validate` then leaves
`coles` (and concatenations using it) out of the table and says so under it. Lower `coles.min_seq_len` to
train on such data anyway.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from llm4trx.core.cli import stage_main
from llm4trx.core.sections import ColesSpec
from llm4trx.data.chunks import read_events
from llm4trx.data.curves import write_coles_losses
from llm4trx.data.embeddings import embeddings_frame, embeddings_path, write_embeddings
from llm4trx.data.splits import read_splits
from llm4trx.data.sequences import categorical_columns, ptls_records
from llm4trx.evaluation.coles_model import infer, numeric_transforms, train_encoder
from llm4trx.core.stage import require, run_stage

log = logging.getLogger(__name__)

# What core/stage_runner.py imports before forking this stage, so that later stages inherit it.
PRELOAD = ("pytorch_lightning",)

# A contrastive loss needs other clients as negatives: at least two clients must qualify.
MIN_TRAIN_CLIENTS = 2


def epoch_loss_recorder():
    """A Lightning callback collecting the mean training loss of each epoch (CoLESModule returns it per step)."""
    import pytorch_lightning as pl

    class EpochLoss(pl.Callback):
        def __init__(self):
            self.epochs: list[dict] = []
            self._sum, self._n = 0.0, 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self._sum, self._n = self._sum + float(loss.detach()), self._n + 1

        def on_train_epoch_end(self, trainer, module):
            if self._n:
                self.epochs.append({"epoch": trainer.current_epoch + 1, "loss": self._sum / self._n})
            self._sum, self._n = 0.0, 0

    return EpochLoss()


def qualifying(records: list[dict], min_seq_len: int) -> tuple[list[dict], int]:
    """The records with at least `min_seq_len` events, and how many were shorter."""
    kept = [r for r in records if len(r["event_time"]) >= min_seq_len]
    return kept, len(records) - len(kept)


def read_records(cfg: DictConfig) -> tuple[list[dict], dict, list[dict], int]:
    """(every client's ptls record, category sizes, the pretraining clients' records long enough to train on,
    how many pretraining clients were too short), from data/ as the stage reads it."""
    c = ColesSpec.from_config(cfg.coles)
    data = require(cfg, "prepare")
    splits = read_splits(data, ("client_id", "split"))
    pretrain_ids = set(splits.loc[splits["split"].isin(["train", "val"]), "client_id"])
    categorical = categorical_columns(c.categorical, cfg.dataset.categorical)
    numeric = list(numeric_transforms(c.numeric))
    events = read_events(data, ["client_id", "event_time", *categorical, *numeric])  # only what ptls reads
    records, sizes = ptls_records(
        events,
        categorical,
        numeric,
        pretrain_ids,
        time_features=c.time_features,
        time_origin=cfg.dataset.get("time_origin"),
        time_numeric=c.time_numeric,
    )
    train_records, too_short = qualifying([r for r in records if r["client_id"] in pretrain_ids], int(c.min_seq_len))
    return records, sizes, train_records, too_short


def run(cfg: DictConfig) -> Path:
    def build(tmp: Path) -> dict:
        records, sizes, train_records, too_short = read_records(cfg)
        c = ColesSpec.from_config(cfg.coles)
        min_len = int(c.min_seq_len)
        if too_short and len(train_records) >= MIN_TRAIN_CLIENTS:
            log.warning(
                "coles: %d of %d pretraining clients have fewer than coles.min_seq_len=%d transactions; "
                "trained on the other %d, every client is embedded",
                too_short,
                too_short + len(train_records),
                min_len,
                len(train_records),
            )
        if len(train_records) < MIN_TRAIN_CLIENTS:
            reason = (
                f"{len(train_records)} of {too_short + len(train_records)} pretraining clients have at least "
                f"coles.min_seq_len={min_len} transactions, fewer than the {MIN_TRAIN_CLIENTS} CoLES needs; "
                f"lower coles.min_seq_len to train on them"
            )
            log.info("coles: skipped: %s", reason)  # the console's end line says it
            return {
                "skipped": reason,
                "clients": len(records),
                "train_clients": len(train_records),
                "too_short": too_short,
            }
        losses = epoch_loss_recorder()
        encoder = train_encoder(train_records, sizes, c, int(cfg.seed), bool(cfg.progress), callbacks=[losses])
        matrix = infer(encoder, records, int(c.inference_batch_size), c.inference_max_len)
        frame = embeddings_frame(cfg.dataset.id_column, [r["client_id"] for r in records], matrix)
        write_embeddings(embeddings_path(tmp, "coles"), frame)
        write_coles_losses(tmp, losses.epochs)
        return {
            "clients": len(records),
            "train_clients": len(train_records),
            "too_short": too_short,
            "dim": int(matrix.shape[1]),
            "final_loss": losses.epochs[-1]["loss"] if losses.epochs else None,
        }

    return run_stage(cfg, "coles", build)


def summary_line(c: dict, seconds: float, folder: Path) -> str:
    if c.get("skipped"):
        return f"skipped: {c['skipped']}"
    loss = f", last epoch's loss {c['final_loss']:.4f}" if c.get("final_loss") is not None else ""
    return (
        f"trained on {c['train_clients']:,} clients ({c.get('too_short', 0):,} shorter than "
        f"min_seq_len left out){loss}, embedded {c['clients']:,}"
    )


main = stage_main(run, summary_line)

if __name__ == "__main__":
    main()
