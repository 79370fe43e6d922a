"""The two fine-tuning methods' inputs and models (used by llm4trx.lm.supervised).

- `head`: the decoder (no LM head) + a linear classification head on pooled hidden states (lm/pooling.py, the
  options of `embed`): `head_sequences`, `HeadClassifier`.
- `verbalizer`: the client's text followed by an instruction (inside the tokenizer's chat template when it has
  one); the class scores are the next-token logits of each label word's first token: `label_token_ids`,
  `verbalizer_sequences`, `VerbalizerClassifier`.
Either trains every weight, or LoRA adapters (peft; `lora_config`, `check_lora_targets`) and the head.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from llm4trx.core.errors import ConfigError, DataError
from llm4trx.core.sections import FinetuneRunSpec
from llm4trx.lm.pooling import pool, pooled_width, position_ids_for
from llm4trx.lm.tokenizers import load_tokenizer

log = logging.getLogger(__name__)

UNKNOWN_WORDS = ("vocabulary", "error")  # finetune.verbalizer.unknown_words (see label_token_ids)
TEXT_MARK = "\x00LLM4TRX_TEXT\x00"  # placeholder for the client's text inside the chat template


def classifier_tokenizer(model_dir: Path):
    """The model's tokenizer, padding on the left (with eos as pad when it has none)."""
    tokenizer = load_tokenizer(model_dir, need=())
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
    """Decoder + linear head on pooled hidden states (embed.pooling's choices, averaged layers)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, n_classes: int, pooling: str, layer_slice):
        super().__init__()
        self.backbone, self.pooling, self.layer_slice = backbone, pooling, list(layer_slice)
        self.head = nn.Linear(pooled_width(pooling, hidden_size), n_classes)

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


def lora_config(spec: FinetuneRunSpec, task_type: str | None):
    from peft import LoraConfig

    lora = spec.finetune.lora
    return LoraConfig(
        r=int(lora.r),
        lora_alpha=int(lora.alpha),
        lora_dropout=float(lora.dropout),
        target_modules=list(lora.target_modules),
        task_type=task_type,
        bias="none",
    )


def build_model(spec: FinetuneRunSpec, run: str, model_dir: Path, label_ids: list[int] | None) -> nn.Module:
    import inspect

    from peft import get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM

    f = spec.finetune
    method = f.methods[run]
    dtype = torch.bfloat16 if f.training.precision == "bf16" and method.lora else torch.float32
    loader = AutoModel if method.kind == "head" else AutoModelForCausalLM
    base = loader.from_pretrained(str(model_dir), torch_dtype=dtype, trust_remote_code=False)
    if f.training.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    keep = "logits_to_keep" in inspect.signature(base.forward).parameters
    if method.lora:
        base = get_peft_model(base, lora_config(spec, None if method.kind == "head" else "CAUSAL_LM"))
    if method.kind == "head":
        return HeadClassifier(base, int(base.config.hidden_size), int(spec.dataset.n_classes), f.pooling, f.layer_slice)
    return VerbalizerClassifier(base, label_ids, keep)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }
