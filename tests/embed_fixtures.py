"""Inputs of the embed and validate stages, built directly in the contract's file formats.

Stand-ins for prepare (data/), text (text/*.jsonl) and export (hf/: a tiny random Llama and a byte-level
BPE tokenizer) so these stages are tested on their own. The generated targets depend on the sequences
(category mix and amounts), so methods that read the sequences beat random features.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from llm4trx.core.stage import stage_dir, write_success

SIGNAL_MCC = [5411, 5812, 5912, 4111, 5541, 5999]
OTHER_MCC = [6011, 7011, 5732, 5651, 4814, 5311]


def make_events(n_clients: int, categorical, seed: int = 0, unlabeled_fraction: float = 0.15):
    """Events, targets and a latent class per client. Target 1 clients favour SIGNAL_MCC and spend more."""
    rng = np.random.default_rng(seed)
    rows, targets = [], []
    start = np.datetime64("2024-01-01T00:00:00")
    for c in range(n_clients):
        client_id = f"c{c:05d}"
        latent = int(rng.random() < 0.5)
        n = int(rng.integers(20, 60))
        p_signal = 0.7 if latent else 0.3
        is_signal = rng.random(n) < p_signal
        mcc = np.where(is_signal, rng.choice(SIGNAL_MCC, n), rng.choice(OTHER_MCC, n)).astype("int32")
        amount = np.round(rng.lognormal(3.0 + 0.6 * latent, 1.0, n), 2)
        times = start + np.sort(rng.integers(0, 90 * 24 * 3600, n)).astype("timedelta64[s]")
        frame = {"client_id": client_id, "event_time": times, "amount": amount, "mcc": mcc}
        for k, column in enumerate(categorical):
            frame[column] = rng.choice([f"{column[:2]}{v}" for v in range(3 + k)], n)
        rows.append(pd.DataFrame(frame))
        if rng.random() >= unlabeled_fraction:
            noisy = latent if rng.random() >= 0.1 else 1 - latent
            targets.append((client_id, noisy))
    events = pd.concat(rows, ignore_index=True)
    events["event_time"] = events["event_time"].astype("datetime64[us]")
    targets = pd.DataFrame(targets, columns=["client_id", "target"]).astype({"target": "int64"})
    return events, targets


def make_splits(all_ids, targets: pd.DataFrame, n_folds: int = 5, test_fraction: float = 0.1,
                val_fraction: float = 0.05) -> pd.DataFrame:
    """The pytorch-lifestream protocol: labeled sorted, shuffled with Random(42), last 10 % test."""
    labeled = sorted(targets["client_id"])
    random.Random(42).shuffle(labeled)
    n_test = int(round(len(labeled) * test_fraction))
    test, rest = set(labeled[len(labeled) - n_test:]), labeled[: len(labeled) - n_test]
    y = targets.set_index("client_id").loc[rest, "target"].to_numpy()
    fold = {}
    for k, (_, idx) in enumerate(StratifiedKFold(n_folds, shuffle=True, random_state=42).split(rest, y)):
        fold.update({rest[i]: k for i in idx})
    labeled_set = set(labeled)
    rng = random.Random(0)
    records = []
    for cid in sorted(all_ids):
        split = "test" if cid in test else ("val" if rng.random() < val_fraction else "train")
        records.append((cid, split, fold.get(cid, -1), cid in labeled_set))
    splits = pd.DataFrame(records, columns=["client_id", "split", "fold", "labeled"])
    return splits.astype({"fold": "int8", "labeled": "bool"})


def render(events: pd.DataFrame) -> pd.Series:
    """One line per transaction, newest last (the shape of the real formats, not their content)."""
    lines = events["event_time"].dt.strftime("%m-%d") + " " + events["mcc"].astype(str) + " " + \
        events["amount"].round(0).astype(int).astype(str)
    return lines.groupby(events["client_id"]).agg("\n".join)


def mark_done(folder: Path, counts: dict | None = None) -> None:
    write_success(folder, "fixture", time.time(), counts)


def write_data(cfg, n_clients: int = 300, seed: int = 0) -> Path:
    folder = stage_dir(cfg, "prepare")
    folder.mkdir(parents=True, exist_ok=True)
    events, targets = make_events(n_clients, list(cfg.dataset.categorical), seed)
    splits = make_splits(events["client_id"].unique(), targets, int(cfg.splits.n_folds))
    events.to_parquet(folder / "events.parquet", index=False)
    targets.to_parquet(folder / "targets.parquet", index=False)
    splits.to_parquet(folder / "splits.parquet", index=False)
    mark_done(folder, {"clients": n_clients})
    return folder


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
                f.write(json.dumps({"client_id": cid, "text": texts[cid], "n_events": int(n_events[cid]),
                                    "n_events_kept": int(n_events[cid]), "n_tokens": 0}) + "\n")
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
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(corpus), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
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


def write_all(cfg, n_clients: int = 300) -> None:
    write_data(cfg, n_clients)
    write_text(cfg)
    write_hf(cfg)
