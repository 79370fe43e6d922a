"""The Hugging Face Trainer of a fine-tuning fold (used by llm4trx.lm.supervised): samples, the optimizer's
two learning rates (adapters/weights, head), learning curves with early stopping and the best weights kept,
length-sorted prediction.

Sequences are left-padded to the longest of their batch; training batches are grouped by length (Trainer's
LengthGroupedSampler), evaluation and prediction batches are sorted by length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm4trx.core.sections import FinetuneRunSpec


def use_cuda(spec: FinetuneRunSpec) -> bool:
    device = spec.finetune.training.device
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


class Samples(torch.utils.data.Dataset):
    """Token ids (and labels) of the clients `ids`, in that order."""

    def __init__(self, ids, sequences: list[list[int]], labels: np.ndarray | None):
        self.ids, self.sequences, self.labels = list(ids), sequences, labels

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"input_ids": self.sequences[i], "attention_mask": [1] * len(self.sequences[i])}
        if self.labels is not None:
            item["labels"] = int(self.labels[i])
        return item


def probabilities(scores: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(scores, dtype=torch.float64), -1).numpy()


@dataclass
class Curves:
    """One fold's learning curves: train loss per step, held-out loss and metric per evaluation."""

    metric: str
    patience: int
    train: list[list[float]] = field(default_factory=list)
    eval: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_metric: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0


def trainer_callback(curves: Curves, max_steps: int):
    from transformers import TrainerCallback

    class Track(TrainerCallback):
        """Records the curves, keeps the best trainable weights in memory, stops after `patience` evaluations
        without improvement, and evaluates at the last step too."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step >= max_steps:
                control.should_evaluate = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                curves.train.append([int(state.global_step), float(logs["loss"])])

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            value = float(metrics[f"eval_{curves.metric}"])
            step = int(state.global_step)
            if curves.eval and curves.eval[-1]["step"] == step:
                return  # the same step evaluated twice (last step on an eval interval)
            curves.eval.append({"step": step, "loss": float(metrics["eval_loss"]), curves.metric: value})
            if value > curves.best_metric:
                curves.best_metric, curves.best_step, curves.stale = value, step, 0
                curves.best_state = {
                    n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
                }
            else:
                curves.stale += 1
                if curves.stale >= curves.patience:
                    control.should_training_stop = True

    return Track()


def make_trainer(
    spec: FinetuneRunSpec,
    model: nn.Module,
    tokenizer,
    train: Samples,
    held: Samples,
    out_dir: Path,
    callbacks,
    compute_metrics,
):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    t = spec.finetune.training

    class FinetuneTrainer(Trainer):
        def _get_eval_sampler(self, eval_dataset):
            # group_by_length would also shuffle evaluation and prediction batches (transformers 4.51), and
            # predictions would come back out of order; ours are length-sorted already: keep their order.
            return torch.utils.data.SequentialSampler(eval_dataset)

        def create_optimizer(self):
            if self.optimizer is None:
                named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
                groups = [
                    {"params": [p for n, p in named if not n.startswith("head.")], "lr": float(t.lr)},
                    {"params": [p for n, p in named if n.startswith("head.")], "lr": float(t.head_lr)},
                ]
                self.optimizer = torch.optim.AdamW(
                    [g for g in groups if g["params"]], weight_decay=float(t.weight_decay)
                )
            return self.optimizer

    cuda = use_cuda(spec)
    args = TrainingArguments(
        output_dir=str(out_dir),
        seed=int(spec.seed),
        data_seed=int(spec.seed),
        max_steps=int(t.max_steps),
        per_device_train_batch_size=int(t.micro_batch_size),
        gradient_accumulation_steps=int(t.batch_size) // int(t.micro_batch_size),
        per_device_eval_batch_size=int(t.eval_batch_size),
        learning_rate=float(t.lr),
        weight_decay=float(t.weight_decay),
        warmup_steps=int(t.warmup_steps),
        lr_scheduler_type="linear",
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=int(t.eval_interval),
        eval_on_start=True,
        save_strategy="no",
        group_by_length=True,  # training batches of similar lengths (LengthGroupedSampler), seeded
        bf16=t.precision == "bf16",
        use_cpu=not cuda,
        dataloader_num_workers=int(t.num_workers),
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=not spec.progress,
        label_names=["labels"],
    )
    trainer = FinetuneTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held,
        data_collator=DataCollatorWithPadding(tokenizer, padding="longest"),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    if not spec.progress:  # without progress bars the Trainer prints every log line instead; keep the console quiet
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def predict_scores(trainer, samples: Samples) -> np.ndarray:
    """Class scores in the order of `samples`, predicted in length-sorted batches."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples.sequences[i]))
    ordered = Samples([samples.ids[i] for i in order], [samples.sequences[i] for i in order], None)
    scores = trainer.predict(ordered).predictions
    out = np.empty_like(scores)
    out[order] = scores
    return out
