"""Language-model inputs for tests of pretrain/export/embed: a tokenizer/ dir and mds/{train,val}/ shards.

Written in the exact format of the contract (the stage contract: tokenizer → tokenizer/, shards → mds/) and marked
finished with `_SUCCESS.json`, so `llm4trx.core.stage.require()` accepts them. The texts are transaction-like
lines with learnable regularities (each client repeats a few merchants and amount ranges), so a tiny LM's
loss falls within tens of steps.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from llm4trx.core.stage import stage_dir, write_success

MERCHANTS = [
    "grocery stores",
    "fast food",
    "gas stations",
    "pharmacies",
    "taxi",
    "book stores",
    "airlines",
    "hotels",
    "clothing",
    "electronics",
    "cinemas",
    "restaurants",
]
CHANNELS = ["POS", "ONLINE", "ATM"]


def client_text(rng: random.Random, n_events: int) -> str:
    favourites = rng.sample(MERCHANTS, 3)
    channel = rng.choice(CHANNELS)
    scale = rng.choice([10, 100, 1000])
    lines = [f"client | {channel} | RUB"]
    day = rng.randint(1, 20)
    for _ in range(n_events):
        day = min(28, day + rng.randint(0, 2))
        merchant = rng.choice(favourites) if rng.random() < 0.85 else rng.choice(MERCHANTS)
        amount = round(rng.uniform(1, 9) * scale, 2)
        lines.append(f"2023-05-{day:02d}, {merchant}, {amount}, {channel}")
    return "\n".join(lines)


def make_texts(n_clients: int, seed: int = 0, min_events: int = 3, max_events: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [client_text(rng, rng.randint(min_events, max_events)) for _ in range(n_clients)]


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 400, pad: bool = True, eos: bool = True):
    """Byte-level BPE saved as a PreTrainedTokenizerFast with bos/eos/pad (pad/eos can be left out)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    kwargs = {"bos_token": "<|bos|>"}
    if eos:
        kwargs["eos_token"] = "<|eos|>"
    if pad:
        kwargs["pad_token"] = "<|pad|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.save_pretrained(str(out_dir))
    return fast


def write_mds(out_dir: Path, samples: list[tuple[str, np.ndarray]]) -> None:
    from streaming import MDSWriter

    columns = {"tokens": "ndarray:int32", "client_id": "str"}
    with MDSWriter(out=str(out_dir), columns=columns, compression="zstd") as writer:
        for client_id, tokens in samples:
            writer.write({"tokens": tokens.astype(np.int32), "client_id": client_id})


def build_lm_inputs(
    cfg,
    n_train: int = 160,
    n_val: int = 24,
    seed: int = 0,
    vocab_size: int = 400,
    pad: bool = True,
    eos: bool = True,
    empty_val: bool = False,
) -> dict[str, Path]:
    """Write tokenizer/ and mds/{train,val}/ for the run of `cfg`; returns their folders."""
    tok_dir, mds_dir = stage_dir(cfg, "tokenizer"), stage_dir(cfg, "shards")
    started = time.time()
    texts = make_texts(n_train + n_val, seed=seed)
    tok_dir.mkdir(parents=True, exist_ok=True)
    fast = train_tokenizer(texts[:n_train], tok_dir, vocab_size=vocab_size, pad=pad, eos=eos)
    write_success(tok_dir, f"fixture-tok-{seed}-{vocab_size}-{pad}-{eos}", started, {"vocab_size": len(fast)})

    bos = fast.bos_token_id
    end = fast.eos_token_id if eos else fast.convert_tokens_to_ids("<|eos|>")
    splits = {"train": range(n_train), "val": [] if empty_val else range(n_train, n_train + n_val)}
    counts = {}
    for split, idx in splits.items():
        samples = [
            (f"c{i:05d}", np.array([bos] + fast(texts[i], add_special_tokens=False)["input_ids"] + [end])) for i in idx
        ]
        write_mds(mds_dir / split, samples)
        counts[split] = len(samples)
    write_success(mds_dir, f"fixture-mds-{seed}-{n_train}-{n_val}-{empty_val}", started, counts)
    return {"tokenizer": tok_dir, "shards": mds_dir}


# config.json values of the published checkpoints (from their Hugging Face model cards), so configs of
# continued pretraining can be validated without the weights.
PUBLISHED_CONFIGS = {
    "llama_3_2_1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    },
    "llama_3_2_3b": {
        "model_type": "llama",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    },
    "qwen2_5_1_5b": {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
    },
}


def write_model_config(folder: Path, values: dict) -> Path:
    """A local "checkpoint" directory holding only config.json (no weights)."""
    from transformers import AutoConfig

    folder.mkdir(parents=True, exist_ok=True)
    AutoConfig.for_model(**values).save_pretrained(str(folder))
    return folder


# Overrides of every CPU test run: one torch thread (the test machine's cores are shared; more threads than
# free cores made training 5x slower) and no progress bars.
CPU_TEST = ["progress=false", "trainer.cpu_threads=1"]
# Length-bucketed batches, one client per row (the smoke preset packs its batches instead).
BUCKETED = ["trainer.length_bucketing=true", "trainer.packing=false"]
SMOKE_TEST_SCHEDULE = [
    "trainer.max_duration=60ba",
    "trainer.eval_interval=20ba",
    "trainer.eval_first=true",  # the loss at step 0 (~ln(vocab)): the tests compare the trained loss with it
    "trainer.save_interval=20ba",
    "trainer.global_train_batch_size=8",
    "trainer.device_train_microbatch_size=8",
]


def smoke_cfg(out_root: Path, *overrides: str):
    from llm4trx.core.config import compose

    return compose(["experiment=smoke", f"paths.output_root={out_root}", *CPU_TEST, *overrides])


def clean_stale_streaming_memory() -> None:
    """streaming's clean_stale_shared_memory() under the machine-wide lock that pretraining takes to register its
    datasets: tests in the other xdist worker (stage processes) may be registering theirs at that moment."""
    from filelock import FileLock
    from streaming.base.util import clean_stale_shared_memory

    from llm4trx.lm.foundry_plugins import STREAMING_SHM_LOCK

    with FileLock(str(STREAMING_SHM_LOCK)):
        clean_stale_shared_memory()
