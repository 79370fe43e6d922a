"""Supervised fine-tuning of a causal LM on the downstream target (the library of `python -m llm4trx.finetune`).

Two methods, one training path (transformers' Trainer under accelerate, CPU or GPU by config):

- `head`: the decoder (no LM head) + a linear classification head on pooled hidden states (lm/pooling.py, the
  options of `embed`); every weight trained, or LoRA adapters (peft) + the head.
- `verbalizer`: the client's text followed by an instruction (inside the tokenizer's chat template when it has
  one); the class scores are the next-token logits of each label word's first token; LoRA adapters, or full.

Sequences are left-padded to the longest of their batch with positions counted over real tokens (so the last
position is every row's last real token), training batches are grouped by length (Trainer's
LengthGroupedSampler), evaluation and prediction batches are sorted by length. Every input is checked before
any training starts: label words, LoRA target modules, the model directory, the targets and the folds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from llm4trx.core.errors import ConfigError, DataError
from llm4trx.core.sections import FinetuneRunSpec
from llm4trx.data.curves import write_curves
from llm4trx.data.results import write_finetune_predictions
from llm4trx.data.splits import load_labels
from llm4trx.data.text_files import read_texts
from llm4trx.lm.classifier_trainer import (
    Curves,
    Samples,
    make_trainer,
    predict_scores,
    probabilities,
    trainer_callback,
    use_cuda,
)
from llm4trx.lm.classifiers import (
    UNKNOWN_WORDS,
    build_model,
    check_lora_targets,
    classifier_tokenizer,
    head_sequences,
    label_token_ids,
    parameter_counts,
    verbalizer_sequences,
)
from llm4trx.lm.pooling import POOLINGS

log = logging.getLogger(__name__)

KINDS = ("head", "verbalizer")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


# ------------------------------------------------------------------------------------------ config


def check_config(spec: FinetuneRunSpec) -> None:
    f = spec.finetune
    runs = list(f.runs or [])
    if not runs:
        raise ConfigError("finetune.runs is empty; list at least one key of finetune.methods, e.g. [head]")
    for run in runs:
        if run not in f.methods:
            raise ConfigError(f"finetune.runs: {run!r} is not a key of finetune.methods ({', '.join(f.methods)})")
        kind = f.methods[run].kind
        if kind not in KINDS:
            raise ConfigError(f"finetune.methods.{run}.kind={kind!r}; choose one of {KINDS}")
    if len(set(runs)) != len(runs):
        raise ConfigError(f"finetune.runs lists a run twice: {runs}")
    if f.pooling not in POOLINGS:
        raise ConfigError(f"finetune.pooling={f.pooling!r}; choose one of {POOLINGS}")
    t = f.training
    if t.precision not in PRECISIONS:
        raise ConfigError(f"finetune.training.precision={t.precision!r}; choose one of {PRECISIONS}")
    if t.device not in DEVICES:
        raise ConfigError(f"finetune.training.device={t.device!r}; choose one of {DEVICES}")
    for key in ("max_steps", "batch_size", "micro_batch_size", "eval_batch_size", "eval_interval", "patience"):
        if int(getattr(t, key)) < 1:
            raise ConfigError(f"finetune.training.{key}={getattr(t, key)}; want >= 1")
    if int(t.batch_size) % int(t.micro_batch_size):
        raise ConfigError(
            f"finetune.training.batch_size={t.batch_size} is not a multiple of micro_batch_size="
            f"{t.micro_batch_size} (gradient accumulation = batch_size / micro_batch_size)"
        )
    if any(f.methods[r].kind == "verbalizer" for r in runs):
        words = f.verbalizer.label_words
        if words is None:
            raise ConfigError(
                f"finetune.verbalizer.label_words is not set for dataset loader "
                f"{spec.dataset.loader!r}; set one word per class, e.g. finetune.verbalizer.label_words=[no,yes]"
            )
        if f.verbalizer.unknown_words not in UNKNOWN_WORDS:
            raise ConfigError(
                f"finetune.verbalizer.unknown_words={f.verbalizer.unknown_words!r}; choose one of {UNKNOWN_WORDS}"
            )
        if len(words) != int(spec.dataset.n_classes):
            raise ConfigError(
                f"finetune.verbalizer.label_words has {len(words)} words for dataset.n_classes="
                f"{spec.dataset.n_classes}; give one word per class, class 0 first"
            )
    if t.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("finetune.training.device=cuda but no CUDA device is visible; use device=auto or cpu")
    if t.precision == "bf16" and not use_cuda(spec):
        raise ConfigError("finetune.training.precision=bf16 needs a CUDA device; use precision=fp32 on CPU")


def check_model_dir(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(
            f"finetune.model={str(path)!r} is not a directory (a local HF causal LM: config.json, weights, tokenizer)"
        )
    if not (path / "config.json").is_file():
        raise DataError(path, "no config.json: not a Hugging Face model directory")
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise DataError(
            path,
            "model directory without weights (no *.safetensors or pytorch_model*.bin); "
            "export the model or point finetune.model at a checkpoint with its weights",
        )
    return path


# ------------------------------------------------------------------------------------------ inputs


@dataclass
class Protocol:
    """Labeled clients of the validation protocol, as fine-tuning may see them: the cross-validated clients
    with their targets and folds, and the test clients' ids only (their labels are never read)."""

    train_ids: np.ndarray
    train_y: np.ndarray
    folds: np.ndarray
    test_ids: np.ndarray
    n_classes: int

    def fold_parts(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows trained on, rows held out) of `fold`, as boolean masks over train_ids."""
        held = self.folds == fold
        return ~held, held


def load_protocol(data_dir: Path, n_folds: int, n_classes: int) -> Protocol:
    """The protocol's labeled clients (`llm4trx.data.splits.load_labels`, without the test labels), in id
    order as strings: the order fine-tuning has trained and scored in since it exists (validate uses the
    natural order; changing this one would change the fine-tuned models)."""
    labels = load_labels(
        data_dir,
        n_folds,
        test_labels=False,
        n_classes=n_classes,
        fix="fine-tuning and its metrics need two",
        held_out="held-out",
    )
    ids = pd.Series(labels.train_ids).astype(str).to_numpy()
    order = np.argsort(ids, kind="stable")
    test_ids = np.sort(pd.Series(labels.test_ids, dtype=object).astype(str).to_numpy())
    return Protocol(
        ids[order], labels.train_y[order].astype(np.int64), labels.folds[order].astype(np.int64), test_ids, n_classes
    )


def texts_of(text_dir: Path, ids: np.ndarray) -> dict[str, str]:
    """{client_id: text} for `ids`, from the text stage's files (the clients' own texts, not augmented)."""
    frame = read_texts(text_dir)
    texts = dict(zip(frame["client_id"], frame["text"]))
    missing = [cid for cid in ids if cid not in texts]
    if missing:
        raise DataError(
            text_dir, f"{len(missing)} labeled clients have no text, e.g. {missing[:3]}", column="client_id"
        )
    return {cid: texts[cid] for cid in ids}


@dataclass
class Prepared:
    """Everything a fine-tuning run needs, checked before any training."""

    model_dir: Path
    tokenizer: Any
    protocol: Protocol
    texts: dict[str, str]
    sequences: dict[str, dict[str, list[int]]]  # kind -> client_id -> token ids
    label_ids: list[int] | None
    max_tokens: int


def prepare(spec: FinetuneRunSpec, model_dir: Path, data_dir: Path, text_dir: Path) -> Prepared:
    """Every check of the stage's inputs, in order, before a model is trained."""
    check_config(spec)
    f = spec.finetune
    model_dir = check_model_dir(model_dir)
    runs = list(f.runs)
    if any(f.methods[r].lora for r in runs):
        check_lora_targets(model_dir, list(f.lora.target_modules))
    tokenizer = classifier_tokenizer(model_dir)
    kinds = {f.methods[r].kind for r in runs}
    label_ids = (
        label_token_ids(
            tokenizer,
            list(f.verbalizer.label_words),
            str(f.verbalizer.word_prefix),
            str(f.verbalizer.unknown_words),
        )
        if "verbalizer" in kinds
        else None
    )
    protocol = load_protocol(data_dir, int(spec.splits.n_folds), int(spec.dataset.n_classes))
    ids = np.concatenate([protocol.train_ids, protocol.test_ids])
    texts = texts_of(text_dir, ids)
    max_tokens = int(f.max_tokens or spec.max_seq_len)
    ordered = [texts[cid] for cid in ids]
    sequences = {}
    if "head" in kinds:
        sequences["head"] = dict(zip(ids, head_sequences(tokenizer, ordered, max_tokens)))
    if "verbalizer" in kinds:
        sequences["verbalizer"] = dict(
            zip(ids, verbalizer_sequences(tokenizer, ordered, str(f.verbalizer.instruction), max_tokens))
        )
    return Prepared(model_dir, tokenizer, protocol, texts, sequences, label_ids, max_tokens)


def train_fold(spec: FinetuneRunSpec, prep: Prepared, run: str, fold: int, work_dir: Path) -> dict[str, Any]:
    """Train `run` on the other folds, early-stop on `fold`; predictions of the held-out fold and the test
    clients from the best evaluation's weights, with the fold's learning curves."""
    from transformers import set_seed

    from llm4trx.evaluation.protocol import METRICS

    f, p = spec.finetune, prep.protocol
    kind = f.methods[run].kind
    metric = str(spec.dataset.metrics[0])
    classes = np.arange(p.n_classes)
    fit, held = p.fold_parts(fold)
    seqs = prep.sequences[kind]
    train_ids, held_ids = p.train_ids[fit], p.train_ids[held]
    # Held-out clients longest first: evaluation batches of similar lengths (the metric ignores the order).
    by_length = np.argsort([-len(seqs[c]) for c in held_ids], kind="stable")
    held_ids, held_y = held_ids[by_length], p.train_y[held][by_length]
    train = Samples(train_ids, [seqs[c] for c in train_ids], p.train_y[fit])
    held_out = Samples(held_ids, [seqs[c] for c in held_ids], held_y)
    test = Samples(p.test_ids, [seqs[c] for c in p.test_ids], None)

    set_seed(int(spec.seed))
    model = build_model(spec, run, prep.model_dir, prep.label_ids)
    counts = parameter_counts(model)
    curves = Curves(metric=metric, patience=int(f.training.patience))

    def compute_metrics(pred) -> dict[str, float]:
        proba = probabilities(pred.predictions)
        return {m: float(METRICS[m](pred.label_ids, proba, classes)) for m in spec.dataset.metrics}

    trainer = make_trainer(
        spec,
        model,
        prep.tokenizer,
        train,
        held_out,
        work_dir,
        [trainer_callback(curves, int(f.training.max_steps))],
        compute_metrics,
    )
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    steps = int(trainer.state.global_step)
    if curves.best_state is not None:
        missing = model.load_state_dict(curves.best_state, strict=False)
        assert not missing.unexpected_keys, missing.unexpected_keys
    val_scores, test_scores = predict_scores(trainer, held_out), predict_scores(trainer, test)
    frames = []
    for part, ids, scores in (("val", held_ids, val_scores), ("test", p.test_ids, test_scores)):
        proba = probabilities(scores)
        frame = pd.DataFrame({"run": run, "fold": fold, "part": part, "client_id": ids})
        for c in range(p.n_classes):
            frame[f"p_{c}"] = proba[:, c].astype(np.float64)
        frames.append(frame)
    samples_seen = steps * int(f.training.batch_size)
    log.info(
        "finetune %s fold %d: %d steps, best %s %.4f at step %s, %.1f s",
        run,
        fold,
        steps,
        metric,
        curves.best_metric,
        curves.best_step,
        seconds,
    )
    del trainer, model
    return {
        "predictions": pd.concat(frames, ignore_index=True),
        "curve": {
            "train": curves.train,
            "eval": curves.eval,
            "best_step": curves.best_step,
            "best_metric": curves.best_metric,
            "steps": steps,
            "seconds": round(seconds, 3),
            "samples_per_second": round(samples_seen / seconds, 3) if seconds > 0 else None,
            "n_train": int(fit.sum()),
            "n_held_out": int(held.sum()),
            "n_test": len(p.test_ids),
            "parameters": counts,
        },
    }


def fine_tune(spec: FinetuneRunSpec, prep: Prepared, out: Path, progress=None) -> dict[str, Any]:
    """Every run of finetune.runs on every fold; writes predictions.parquet and curves.json into `out`."""
    f = spec.finetune
    if not use_cuda(spec) and f.training.cpu_threads:
        torch.set_num_threads(int(f.training.cpu_threads))
    folds = sorted(int(k) for k in np.unique(prep.protocol.folds))
    predictions, curves = [], {}
    for run in f.runs:
        curves[run] = {"kind": str(f.methods[run].kind), "lora": bool(f.methods[run].lora), "folds": {}}
        for fold in folds:
            result = train_fold(spec, prep, run, fold, out / ".work")
            predictions.append(result["predictions"])
            curves[run]["folds"][str(fold)] = result["curve"]
            if progress is not None:
                progress()
    frame = pd.concat(predictions, ignore_index=True)
    write_finetune_predictions(out, frame)
    meta = {
        "metric": str(spec.dataset.metrics[0]),
        "n_classes": prep.protocol.n_classes,
        "model": str(prep.model_dir),
        "max_tokens": prep.max_tokens,
        "label_words": list(f.verbalizer.label_words) if prep.label_ids else None,
        "label_token_ids": prep.label_ids,
        "label_tokens": prep.tokenizer.convert_ids_to_tokens(prep.label_ids) if prep.label_ids else None,
        "runs": curves,
    }
    write_curves(out, meta)
    import shutil

    shutil.rmtree(out / ".work", ignore_errors=True)
    return {
        "runs": list(f.runs),
        "folds": len(folds),
        "predictions": len(frame),
        "best_steps": {run: {k: v["best_step"] for k, v in c["folds"].items()} for run, c in curves.items()},
        "trainable_parameters": {
            run: next(iter(c["folds"].values()))["parameters"]["trainable"] for run, c in curves.items()
        },
    }
