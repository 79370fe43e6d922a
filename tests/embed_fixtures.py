"""Inputs of the embed and validate stages.

data/ is built by the product (the synthetic generator and prepare); text/ and hf/ (a tiny random Llama and a
byte-level BPE tokenizer) are written directly in the contract's file formats, so these stages are tested on
their own without pretraining.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from llm4trx.core.stage import stage_dir, write_success


def render(events: pd.DataFrame) -> pd.Series:
    """One line per transaction, newest last (the shape of the real formats, not their content)."""
    lines = (
        events["event_time"].dt.strftime("%m-%d")
        + " "
        + events["mcc"].astype(str)
        + " "
        + events["amount"].round(0).astype(int).astype(str)
    )
    return lines.groupby(events["client_id"]).agg("\n".join)


def mark_done(folder: Path, counts: dict | None = None) -> None:
    write_success(folder, "fixture", time.time(), counts)


def write_data(cfg) -> Path:
    """data/ by the product itself: the synthetic generator, the real loader of its schema, the split protocol."""
    from llm4trx import prepare

    return prepare.run(cfg)


def write_text(cfg) -> Path:
    data = stage_dir(cfg, "prepare")
    events = pd.read_parquet(data / "events.parquet")
    splits = pd.read_parquet(data / "splits.parquet").set_index("client_id")
    texts = render(events)
    folder = stage_dir(cfg, "text")
    folder.mkdir(parents=True, exist_ok=True)
    n_events = events.groupby("client_id").size()
    for split in ("train", "val", "test"):
        with open(folder / f"{split}.jsonl", "w") as f:
            for cid in splits.index[splits["split"] == split]:
                f.write(
                    json.dumps(
                        {
                            "client_id": cid,
                            "text": texts[cid],
                            "n_events": int(n_events[cid]),
                            "n_events_kept": int(n_events[cid]),
                            "n_tokens": 0,
                        }
                    )
                    + "\n"
                )
    mark_done(folder)
    return folder


def write_tiny_llama(folder: Path, corpus, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised Llama and a byte-level BPE trained on `corpus`, saved like the export stage."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(list(corpus), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_hf(cfg) -> Path:
    folder = stage_dir(cfg, "export")
    folder.mkdir(parents=True, exist_ok=True)
    corpus = pd.read_json(stage_dir(cfg, "text") / "train.jsonl", lines=True)["text"]
    write_tiny_llama(folder, corpus)
    mark_done(folder)
    return folder


def write_all(cfg) -> None:
    write_data(cfg)
    write_text(cfg)
    write_hf(cfg)
