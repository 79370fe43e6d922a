"""CoLES loss per epoch on the default run's data: how many epochs until it flattens (sizes conf/coles/).

Trains the coles stage's encoder (llm4trx.coles.train_encoder, the same code and config) on the pretraining
clients of a prepared run and prints the mean training loss of every epoch and the seconds it took; the
reference in the same run is the first epoch's loss.

    PYTHONPATH=source .venv/bin/python bench/coles_epochs.py experiment=smoke seed=12 coles.max_epochs=15
"""

from __future__ import annotations

import os
import sys
import time


def main(overrides):
    import pytorch_lightning as pl

    from llm4trx import coles
    from llm4trx.core.config import compose

    class EpochLoss(pl.Callback):
        def __init__(self):
            self.rows, self.started = [], time.time()

        def on_train_epoch_end(self, trainer, module):
            loss = trainer.callback_metrics.get("loss")
            self.rows.append(
                (trainer.current_epoch, float(loss) if loss is not None else float("nan"), time.time() - self.started)
            )
            print(
                f"epoch {trainer.current_epoch:3d}  loss {self.rows[-1][1]:.4f}  {self.rows[-1][2]:.0f} s", flush=True
            )

    record = EpochLoss()
    init = pl.Trainer.__init__

    def with_callback(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), record]
        init(self, *args, **kwargs)

    pl.Trainer.__init__ = with_callback
    cfg = compose(overrides)
    _, sizes, train, _ = coles.read_records(cfg)  # the stage's own training clients (min_seq_len applied)
    coles.train_encoder(train, sizes, list(cfg.coles.numeric), cfg.coles, int(cfg.seed), False)
    first = record.rows[0][1]
    print(f"\nload {os.getloadavg()[0]:.2f}; loss relative to epoch 0 (same run):")
    for epoch, loss, _ in record.rows:
        print(f"  epoch {epoch:3d}  {loss / first:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
