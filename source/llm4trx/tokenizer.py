"""Stage `tokenizer`: tokenizer/ (a HF fast-tokenizer directory) for the shards and the model.

`tokenizer=domain_bpe`: a byte-level BPE trained with the `tokenizers` library on text/train.jsonl ONLY
(val and test texts never shape the vocabulary), saved as a PreTrainedTokenizerFast with bos/eos/pad.
`tokenizer=fields`: one id per whitespace-separated word (the `tokenizers` WordLevel model with a
WhitespaceSplit pre-tokenizer), its vocabulary the words of text/train.jsonl seen at least `min_frequency`
times (others map to unk): the tokenizer of `text=fields`, where each field value is one word, so the text
stage's budget (count_tokenizer: fields) is exact in this tokenizer's ids.
`tokenizer=pretrained tokenizer.path=DIR`: a local HF tokenizer validated and copied (see
conf/tokenizer/pretrained.yaml for the pad/bos repairs). Neither adds special tokens on its own:
llm4trx.shards writes bos + text + eos explicitly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from llm4trx.core.cli import stage_main
from llm4trx.core.errors import ConfigError
from llm4trx.core.stage import require, run_stage
from llm4trx.data.text_files import text_path

log = logging.getLogger(__name__)

# What core/stage_runner.py imports before forking this stage, so that later stages inherit it.
PRELOAD = ("tokenizers", "transformers.tokenization_utils_fast")


def iter_texts(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)["text"]


def train_domain_tokenizer(
    kind: str,
    texts: Iterator[str],
    vocab_size: int,
    min_frequency: int,
    special: dict[str, str],
    progress: bool = False,
    length: int | None = None,
):
    """A fast tokenizer trained on `texts`: `domain_bpe` (byte-level BPE) or `fields` (one id per
    whitespace-separated word, `unk_token` for the rest). `special`: bos_token, eos_token, pad_token (and
    unk_token for fields); the special tokens take the first ids, pad first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    ids_first = [special["pad_token"], special["bos_token"], special["eos_token"]]
    if kind == "fields":
        tok = Tokenizer(models.WordLevel(unk_token=special["unk_token"]))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[*ids_first, special["unk_token"]],
            show_progress=progress,
        )
    elif kind == "domain_bpe":
        special = {k: v for k, v in special.items() if k != "unk_token"}
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=ids_first,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=progress,
        )
    else:
        raise ConfigError(f"tokenizer.kind={kind!r} is not trained here (domain_bpe or fields)")
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **special)


def load_pretrained(path: str):
    """A local fast tokenizer with eos; pad and bos repaired from eos where missing (returns repairs made)."""
    from transformers import AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"tokenizer.path={path!r} is not a directory (a local HF tokenizer dir is required)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True)
    except Exception as err:  # transformers raises OSError/ValueError/KeyError for unusable dirs
        raise ConfigError(f"tokenizer.path={path!r}: not a loadable HF tokenizer ({err})") from err
    if not tok.is_fast:
        raise ConfigError(f"tokenizer.path={path!r}: a fast tokenizer (tokenizer.json) is required")
    if tok.eos_token is None:
        raise ConfigError(f"tokenizer.path={path!r} has no eos token; set one in its tokenizer_config.json")
    repairs = []
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        repairs.append("pad_token=eos_token")
    if tok.bos_token is None:
        tok.bos_token = tok.eos_token
        repairs.append("bos_token=eos_token")
    for repair in repairs:
        log.warning("tokenizer %s: repaired %s", path, repair)
    return tok, repairs


def run(cfg: DictConfig) -> Path:
    tc = cfg.tokenizer
    if tc.kind == "pretrained":
        path = tc.get("path")
        if path is None or str(path) == "???":
            raise ConfigError("tokenizer=pretrained needs tokenizer.path=/local/hf/tokenizer/dir")
        load_pretrained(str(path))  # validate before anything is written

    def build(out: Path) -> dict:
        if tc.kind in ("domain_bpe", "fields"):
            train_path = text_path(require(cfg, "text"), "train")
            n = sum(1 for _ in open(train_path, encoding="utf-8"))
            if n == 0:
                raise ConfigError(f"{train_path} is empty: nothing to train the domain tokenizer on")
            special = {k: tc[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if k in tc}
            tok = train_domain_tokenizer(
                tc.kind,
                iter_texts(train_path),
                int(tc.vocab_size),
                int(tc.min_frequency),
                special,
                bool(cfg.get("progress")),
                n,
            )
            repairs, trained_on = [], n
        else:
            tok, repairs = load_pretrained(str(tc.path))
            trained_on = 0
        tok.save_pretrained(str(out))
        return {
            "kind": tc.kind,
            "vocab_size": len(tok),
            "repairs": repairs,
            "trained_on_clients": trained_on,
            "bos": tok.bos_token,
            "eos": tok.eos_token,
            "pad": tok.pad_token,
        }

    return run_stage(cfg, "tokenizer", build)


def summary_line(c: dict, seconds: float, folder: Path) -> str:
    trained = f", trained on {c['trained_on_clients']:,} clients" if c.get("trained_on_clients") else ""
    return f"vocab {c['vocab_size']:,} ({c.get('kind')}{trained})"


main = stage_main(run, summary_line)

if __name__ == "__main__":
    main()
