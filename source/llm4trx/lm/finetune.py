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
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from llm4trx.core.errors import ConfigError, DataError
from llm4trx.data.curves import write_curves
from llm4trx.data.results import write_finetune_predictions
from llm4trx.data.splits import load_labels
from llm4trx.data.texts import read_texts
from llm4trx.lm.pooling import POOLINGS, pool, position_ids_for

log = logging.getLogger(__name__)

KINDS = ("head", "verbalizer")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
UNKNOWN_WORDS = ("vocabulary", "error")  # finetune.verbalizer.unknown_words (see label_token_ids)
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TEXT_MARK = "\x00LLM4TRX_TEXT\x00"  # placeholder for the client's text inside the chat template


# ------------------------------------------------------------------------------------------ config


def check_config(cfg: DictConfig) -> None:
    f = cfg.finetune
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
        if int(t[key]) < 1:
            raise ConfigError(f"finetune.training.{key}={t[key]}; want >= 1")
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
                f"{cfg.dataset.loader!r}; set one word per class, e.g. finetune.verbalizer.label_words=[no,yes]"
            )
        if f.verbalizer.get("unknown_words", "vocabulary") not in UNKNOWN_WORDS:
            raise ConfigError(
                f"finetune.verbalizer.unknown_words={f.verbalizer.unknown_words!r}; choose one of {UNKNOWN_WORDS}"
            )
        if len(words) != int(cfg.dataset.n_classes):
            raise ConfigError(
                f"finetune.verbalizer.label_words has {len(words)} words for dataset.n_classes="
                f"{cfg.dataset.n_classes}; give one word per class, class 0 first"
            )
    if t.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("finetune.training.device=cuda but no CUDA device is visible; use device=auto or cpu")
    if t.precision == "bf16" and not use_cuda(cfg):
        raise ConfigError("finetune.training.precision=bf16 needs a CUDA device; use precision=fp32 on CPU")


def use_cuda(cfg: DictConfig) -> bool:
    device = cfg.finetune.training.device
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


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


# ------------------------------------------------------------------------------------------ tokenization


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise DataError(model_dir, "the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def label_token_ids(tokenizer, words: list[str], prefix: str, unknown: str = "vocabulary") -> list[int]:
    """First token of each label word (tokenized as `prefix + word`); empty or colliding first tokens fail.

    A word the tokenizer does not know (its first token is unk: the field tokenizer's vocabulary holds only
    the words of transaction texts, no "yes"/"no") fails with unknown="error"; with unknown="vocabulary" it is
    scored by a distinct token of the vocabulary instead: the last ids that are neither special nor another
    label word's (for the field tokenizer, whose ids follow frequency, the rarest words of train texts). The
    verbalizer then learns what those tokens mean for the target, as it does for real words of a model
    pretrained from scratch, which never saw English either."""
    unk = tokenizer.unk_token_id
    ids: list[int | None] = []
    for word in words:
        tokens = tokenizer(prefix + str(word), add_special_tokens=False)["input_ids"]
        if not str(word) or not tokens:
            raise ConfigError(
                f"finetune.verbalizer.label_words: {word!r} is empty for the tokenizer; choose a non-empty word"
            )
        ids.append(None if unk is not None and int(tokens[0]) == unk else int(tokens[0]))
    unknown_words = [str(w) for w, token in zip(words, ids) if token is None]
    if unknown_words:
        if unknown != "vocabulary":
            raise ConfigError(
                f"finetune.verbalizer.label_words {unknown_words} are not in the tokenizer's "
                f"vocabulary (they tokenize to {tokenizer.unk_token!r}); choose words it knows, or "
                "finetune.verbalizer.unknown_words=vocabulary to score them by spare vocabulary tokens"
            )
        taken = {t for t in ids if t is not None} | set(tokenizer.all_special_ids)
        spare = iter(sorted((i for i in tokenizer.get_vocab().values() if i not in taken), reverse=True))
        ids = [next(spare) if t is None else t for t in ids]
        chosen = {w: tokenizer.convert_ids_to_tokens(t) for w, t in zip(words, ids) if str(w) in unknown_words}
        log.warning(
            "finetune: label words %s are not in the tokenizer's vocabulary; scored by the vocabulary "
            "tokens %s instead (finetune.verbalizer.unknown_words=vocabulary)",
            unknown_words,
            chosen,
        )
    seen: dict[int, str] = {}
    for word, token in zip(words, ids):
        if token in seen:
            piece = tokenizer.convert_ids_to_tokens(token)
            raise ConfigError(
                f"finetune.verbalizer.label_words {seen[token]!r} and {word!r} start with the same "
                f"token {piece!r} (id {token}) with word_prefix={prefix!r}; choose words whose first "
                "tokens differ (or change finetune.verbalizer.word_prefix)"
            )
        seen[token] = word
    return ids


def head_sequences(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """bos + text + eos, as pretraining and embed see a client; longer texts keep their most recent tokens."""
    body = tokenizer(texts, add_special_tokens=False)["input_ids"]
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    room = max_tokens - len(head) - len(tail)
    if room < 1:
        raise ConfigError(f"finetune.max_tokens={max_tokens} leaves no room for text")
    return [head + ids[-room:] + tail for ids in body]


def prompt_parts(tokenizer, instruction: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the client's text. With a chat template: the user message is the text plus
    the instruction, followed by the generation prompt (the answer's first token is the label word)."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": TEXT_MARK + instruction}], tokenize=False, add_generation_prompt=True
        )
        before, after = rendered.split(TEXT_MARK)
        # The template writes bos itself as text; tokenize without adding special tokens again.
        return (
            tokenizer(before, add_special_tokens=False)["input_ids"],
            tokenizer(after, add_special_tokens=False)["input_ids"],
        )
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos, tokenizer(instruction, add_special_tokens=False)["input_ids"]


def verbalizer_sequences(tokenizer, texts: list[str], instruction: str, max_tokens: int) -> list[list[int]]:
    before, after = prompt_parts(tokenizer, instruction)
    room = max_tokens - len(before) - len(after)
    if room < 1:
        raise ConfigError(
            f"finetune.max_tokens={max_tokens} leaves no room for text besides the prompt "
            f"({len(before) + len(after)} tokens)"
        )
    body = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [before + ids[-room:] + after for ids in body]


# ------------------------------------------------------------------------------------------ models


class HeadClassifier(nn.Module):
    """Decoder + linear head on pooled hidden states (mean or last real token, averaged layers)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, n_classes: int, pooling: str, layer_slice):
        super().__init__()
        self.backbone, self.pooling, self.layer_slice = backbone, pooling, list(layer_slice)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, input_ids, attention_mask, labels=None):
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask),
            output_hidden_states=True,
            use_cache=False,
        )
        pooled = pool(out.hidden_states, attention_mask, self.pooling, self.layer_slice)
        logits = self.head(pooled.to(self.head.weight.dtype)).float()
        result = {"logits": logits}
        if labels is not None:
            result["loss"] = nn.functional.cross_entropy(logits, labels)
        return result


class VerbalizerClassifier(nn.Module):
    """Causal LM whose class scores are the next-token logits of the label words' first tokens after the prompt.
    Inputs are left-padded, so position -1 is every row's last prompt token."""

    def __init__(self, lm: nn.Module, label_ids: list[int], logits_to_keep: bool):
        super().__init__()
        self.lm, self.logits_to_keep = lm, logits_to_keep
        self.register_buffer("label_ids", torch.tensor(label_ids, dtype=torch.long), persistent=False)

    def forward(self, input_ids, attention_mask, labels=None):
        extra = {"logits_to_keep": 1} if self.logits_to_keep else {}
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask),
            use_cache=False,
            **extra,
        )
        logits = out.logits[:, -1, :].index_select(-1, self.label_ids).float()
        result = {"logits": logits}
        if labels is not None:
            result["loss"] = nn.functional.cross_entropy(logits, labels)
        return result


def linear_module_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def check_lora_targets(model_dir: Path, targets: list[str]) -> None:
    """Every LoRA target module must exist in the model (checked on a weightless copy: accelerate's init_empty_weights)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir))
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    names = {name.rsplit(".", 1)[-1] for name, _ in skeleton.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(
            f"finetune.lora.target_modules {missing} are not modules of the model in {model_dir} "
            f"({config.model_type}); its linear layers: {sorted(linear_module_names(skeleton))}"
        )


def lora_config(cfg: DictConfig, task_type: str | None):
    from peft import LoraConfig

    lora = cfg.finetune.lora
    return LoraConfig(
        r=int(lora.r),
        lora_alpha=int(lora.alpha),
        lora_dropout=float(lora.dropout),
        target_modules=list(lora.target_modules),
        task_type=task_type,
        bias="none",
    )


def build_model(cfg: DictConfig, run: str, model_dir: Path, label_ids: list[int] | None) -> nn.Module:
    import inspect

    from peft import get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM

    f = cfg.finetune
    method = f.methods[run]
    dtype = torch.bfloat16 if f.training.precision == "bf16" and method.lora else torch.float32
    loader = AutoModel if method.kind == "head" else AutoModelForCausalLM
    base = loader.from_pretrained(str(model_dir), torch_dtype=dtype, trust_remote_code=False)
    if f.training.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    keep = "logits_to_keep" in inspect.signature(base.forward).parameters
    if method.lora:
        base = get_peft_model(base, lora_config(cfg, None if method.kind == "head" else "CAUSAL_LM"))
    if method.kind == "head":
        return HeadClassifier(base, int(base.config.hidden_size), int(cfg.dataset.n_classes), f.pooling, f.layer_slice)
    return VerbalizerClassifier(base, label_ids, keep)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }


# ------------------------------------------------------------------------------------------ training


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
    cfg: DictConfig,
    model: nn.Module,
    tokenizer,
    train: Samples,
    held: Samples,
    out_dir: Path,
    callbacks,
    compute_metrics,
):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    t = cfg.finetune.training

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

    cuda = use_cuda(cfg)
    args = TrainingArguments(
        output_dir=str(out_dir),
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
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
        disable_tqdm=not cfg.progress,
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
    if not cfg.progress:  # without progress bars the Trainer prints every log line instead; keep the console quiet
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


def prepare(cfg: DictConfig, model_dir: Path, data_dir: Path, text_dir: Path) -> Prepared:
    """Every check of the stage's inputs, in order, before a model is trained."""
    check_config(cfg)
    f = cfg.finetune
    model_dir = check_model_dir(model_dir)
    runs = list(f.runs)
    if any(f.methods[r].lora for r in runs):
        check_lora_targets(model_dir, list(f.lora.target_modules))
    tokenizer = load_tokenizer(model_dir)
    kinds = {f.methods[r].kind for r in runs}
    label_ids = (
        label_token_ids(
            tokenizer,
            list(f.verbalizer.label_words),
            str(f.verbalizer.word_prefix),
            str(f.verbalizer.get("unknown_words", "vocabulary")),
        )
        if "verbalizer" in kinds
        else None
    )
    protocol = load_protocol(data_dir, int(cfg.splits.n_folds), int(cfg.dataset.n_classes))
    ids = np.concatenate([protocol.train_ids, protocol.test_ids])
    texts = texts_of(text_dir, ids)
    max_tokens = int(f.max_tokens or cfg.max_seq_len)
    ordered = [texts[cid] for cid in ids]
    sequences = {}
    if "head" in kinds:
        sequences["head"] = dict(zip(ids, head_sequences(tokenizer, ordered, max_tokens)))
    if "verbalizer" in kinds:
        sequences["verbalizer"] = dict(
            zip(ids, verbalizer_sequences(tokenizer, ordered, str(f.verbalizer.instruction), max_tokens))
        )
    return Prepared(model_dir, tokenizer, protocol, texts, sequences, label_ids, max_tokens)


def train_fold(cfg: DictConfig, prep: Prepared, run: str, fold: int, work_dir: Path) -> dict[str, Any]:
    """Train `run` on the other folds, early-stop on `fold`; predictions of the held-out fold and the test
    clients from the best evaluation's weights, with the fold's learning curves."""
    from transformers import set_seed

    from llm4trx.evaluation.protocol import METRICS

    f, p = cfg.finetune, prep.protocol
    kind = f.methods[run].kind
    metric = str(cfg.dataset.metrics[0])
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

    set_seed(int(cfg.seed))
    model = build_model(cfg, run, prep.model_dir, prep.label_ids)
    counts = parameter_counts(model)
    curves = Curves(metric=metric, patience=int(f.training.patience))

    def compute_metrics(pred) -> dict[str, float]:
        proba = probabilities(pred.predictions)
        return {m: float(METRICS[m](pred.label_ids, proba, classes)) for m in cfg.dataset.metrics}

    trainer = make_trainer(
        cfg,
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


def fine_tune(cfg: DictConfig, prep: Prepared, out: Path, progress=None) -> dict[str, Any]:
    """Every run of finetune.runs on every fold; writes predictions.parquet and curves.json into `out`."""
    f = cfg.finetune
    if not use_cuda(cfg) and f.training.cpu_threads:
        torch.set_num_threads(int(f.training.cpu_threads))
    folds = sorted(int(k) for k in np.unique(prep.protocol.folds))
    predictions, curves = [], {}
    for run in f.runs:
        curves[run] = {"kind": str(f.methods[run].kind), "lora": bool(f.methods[run].lora), "folds": {}}
        for fold in folds:
            result = train_fold(cfg, prep, run, fold, out / ".work")
            predictions.append(result["predictions"])
            curves[run]["folds"][str(fold)] = result["curve"]
            if progress is not None:
                progress()
    frame = pd.concat(predictions, ignore_index=True)
    write_finetune_predictions(out, frame)
    meta = {
        "metric": str(cfg.dataset.metrics[0]),
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


def plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
