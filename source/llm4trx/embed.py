"""Stage `embed`: one vector per client from the exported LM (hf/) and the texts of every split.

`embed.model=DIR` applies another model instead: another run's hf/ or a local HF causal-LM checkpoint with
its tokenizer (the run then needs no tokenizer/shards/pretrain/export of its own; see core/registry.py). A
model exported by llm4trx carries hf/llm4trx.json (llm4trx.data.model_record): this run's text format and
schema are checked against it before anything runs. Incremental: a rebuild reuses the previous vectors of the
clients whose text digest (embeddings/text_hashes.parquet) is unchanged when the model and the pooling
settings are the same (`vector_key` in _SUCCESS.json), and computes only the others (`embed.incremental`).

Runs as one process or as several (`torchrun --nproc_per_node N -m llm4trx.embed ...`,
`accelerate launch --multi_gpu --num_processes N -m llm4trx.embed ...`): clients are split between the
processes with accelerate, each process runs length-sorted, dynamically padded batches, the results are
gathered, checked for lost or duplicate clients, and only the main process writes
`embeddings/embeddings.parquet` (<dataset.id_column> string, then emb_0000.. float32).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from llm4trx.core.cli import figure, stage_main
from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import RunSpec
from llm4trx.data.embeddings import (
    embeddings_frame,
    embeddings_path,
    read_embeddings,
    read_text_hashes,
    text_digests,
    write_embeddings,
    write_text_hashes,
)
from llm4trx.data.model_record import applied_model, check_applicable, fingerprint, row_name
from llm4trx.data.text_files import read_texts
from llm4trx.lm.dtypes import DTYPES
from llm4trx.lm.pooling import pool, pooled_width, position_ids_for
from llm4trx.core.stage import is_complete, read_success, require, run_stage, stage_dir, stage_hash

log = logging.getLogger(__name__)

# What core/stage_runner.py imports before forking this stage, so that later stages inherit it.
PRELOAD = ("transformers.models.auto.modeling_auto",)

# embed keys that do not change a client's vector (the row's name, the reuse switch, batch composition).
NOT_IN_VECTOR_KEY = ("name", "incremental", "batch_size", "model")


def check_config(cfg: DictConfig) -> None:
    # embed.pooling, padding_side, dtype, layer_slice, batch_size, segments: declared in core/schema.py
    model = applied_model(cfg.embed.get("model"))
    if model is not None and not (model / "config.json").is_file():
        raise ConfigError(
            f"embed.model={str(model)!r} is not a Hugging Face model directory (no config.json); give "
            "a run's hf/ folder or a local HF causal-LM checkpoint with its tokenizer"
        )


def model_dir_of(cfg: DictConfig) -> Path:
    """The model to embed with: embed.model, else this run's export."""
    return applied_model(cfg.embed.get("model")) or require(cfg, "export")


def vector_key(cfg: DictConfig, model_dir: Path) -> str:
    """What a client's vector depends on besides its text: the model's identity and the pooling settings."""
    settings = {k: v for k, v in OmegaConf.to_container(cfg.embed, resolve=True).items() if k not in NOT_IN_VECTOR_KEY}
    blob = json.dumps({"model": fingerprint(model_dir), "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def previous_vectors(cfg: DictConfig, key: str) -> dict[str, tuple[str, np.ndarray]]:
    """{client_id: (text digest, vector)} of this run's previous embed when its vectors came from the same model
    and settings (and embed.incremental is on, force is off); {} otherwise."""
    if not cfg.embed.get("incremental", True) or cfg.get("force", False):
        return {}
    folder = stage_dir(cfg, "embed")
    done = read_success(folder)
    if done is None or done.get("counts", {}).get("vector_key") != key:
        return {}
    digests = read_text_hashes(folder)
    if not digests:
        return {}
    frame = read_embeddings(embeddings_path(folder), cfg.dataset.id_column, "llm")
    matrix = frame.to_numpy(dtype=np.float32)
    return {cid: (digests[cid], matrix[i]) for i, cid in enumerate(frame.index) if cid in digests}


def load_model(hf_dir: Path, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    # AutoModel: the decoder without its LM head (hidden states are all we need).
    model = AutoModel.from_pretrained(hf_dir, torch_dtype=dtype).to(device).eval()
    return tokenizer, model


def tokenize(tokenizer, texts: list[str], max_tokens: int, prefix: str = "") -> tuple[list[list[int]], int]:
    """bos + text + eos per client, as the pretraining shards hold them (bos + prefix + text + eos with a
    prefix). Longer sequences keep bos, the prefix, the most recent tokens and eos (the text format puts
    the newest transactions last)."""
    body = tokenizer(texts, add_special_tokens=False)["input_ids"]
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if prefix:
        head = head + tokenizer(prefix, add_special_tokens=False)["input_ids"]
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    room = max_tokens - len(head) - len(tail)
    if room < 1:
        raise ConfigError(f"embed.max_tokens={max_tokens} leaves no room for text besides bos/eos")
    n_truncated = sum(len(ids) > room for ids in body)
    return [head + ids[-room:] + tail for ids in body], n_truncated


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (an out-of-memory shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def embed_sequences(
    model,
    pad_id: int,
    sequences: list[list[int]],
    batches: list[list[int]],
    pooling: str,
    layer_slice,
    padding_side: str,
    device,
    progress: bool,
    pad_to: int | None = None,
    segments: int = 1,
) -> np.ndarray:
    """Pooled float32 vectors of `sequences`, in the order of `sequences`. Each batch is padded to its
    longest sequence (`pad_to` pads every batch to that length instead: the benchmark's baseline)."""
    out = np.zeros((len(sequences), pooled_width(pooling, model.config.hidden_size, segments)), dtype=np.float32)
    for batch in tqdm(batches, desc="embed", unit="batch", disable=not progress):
        longest = pad_to or max(len(sequences[i]) for i in batch)
        ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, i in enumerate(batch):
            seq = torch.tensor(sequences[i], dtype=torch.long)
            span = slice(0, len(seq)) if padding_side == "right" else slice(longest - len(seq), longest)
            ids[row, span], mask[row, span] = seq, 1
        ids, mask = ids.to(device), mask.to(device)
        result = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_for(mask),
            output_hidden_states=True,
            use_cache=False,
        )
        out[batch] = pool(result.hidden_states, mask, pooling, layer_slice, segments).cpu().numpy()
    return out


def compute(cfg: DictConfig, state: PartialState) -> dict:
    """Every process embeds its share of the clients to (re)compute; every process returns the gathered,
    checked result, with the reused vectors filled in."""
    texts = read_texts(require(cfg, "text"))
    hf_dir = model_dir_of(cfg)
    tokenizer, model = load_model(hf_dir, DTYPES[cfg.embed.dtype], state.device)
    max_tokens = cfg.embed.max_tokens or model.config.max_position_embeddings
    ids = texts["client_id"].tolist()
    digests = text_digests(texts["text"])
    key = vector_key(cfg, hf_dir)
    previous = previous_vectors(cfg, key)
    segments = int(cfg.embed.get("segments", 1))
    width = pooled_width(cfg.embed.pooling, model.config.hidden_size, segments)
    reused = [
        i
        for i, (cid, digest) in enumerate(zip(ids, digests))
        if cid in previous and previous[cid][0] == digest and len(previous[cid][1]) == width
    ]
    todo = sorted(set(range(len(texts))) - set(reused))

    with state.split_between_processes(todo) as mine:
        mine = list(mine)
    sequences, n_truncated = (
        tokenize(tokenizer, texts["text"].iloc[mine].tolist(), int(max_tokens), str(cfg.embed.get("prefix") or ""))
        if mine
        else ([], 0)
    )
    batches = length_sorted_batches([len(s) for s in sequences], int(cfg.embed.batch_size))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    vectors = embed_sequences(
        model,
        pad_id,
        sequences,
        batches,
        cfg.embed.pooling,
        list(cfg.embed.layer_slice),
        cfg.embed.padding_side,
        state.device,
        progress=bool(cfg.progress) and state.is_main_process,
        segments=segments,
    )
    n_tokens = sum(len(s) for s in sequences)  # real tokens; positions: what the padded batches computed
    positions = sum(len(b) * max(len(sequences[i]) for i in b) for b in batches)

    parts = gather_object([(state.process_index, mine, vectors, n_truncated, n_tokens, positions)])
    parts.sort(key=lambda p: p[0])
    indices = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts])
    if len(indices) != len(todo) or len(np.unique(indices)) != len(todo):
        lost = len(todo) - len(np.unique(indices))
        raise RuntimeError(
            f"gathered {len(indices)} rows for {len(todo)} clients ({lost} lost, "
            f"{len(indices) - len(np.unique(indices))} duplicated)"
        )
    matrix = np.empty((len(texts), width), dtype=np.float32)
    if len(indices):
        matrix[indices] = np.concatenate([p[2] for p in parts])
    for i in reused:
        matrix[i] = previous[ids[i]][1]
    return {
        "client_id": texts["client_id"].to_numpy(),
        "matrix": matrix,
        "digests": digests,
        "counts": {
            "clients": len(texts),
            "dim": int(matrix.shape[1]),
            "world_size": state.num_processes,
            "rows_per_rank": [len(p[1]) for p in parts],
            "recomputed": len(todo),
            "reused": len(reused),
            "vector_key": key,
            "model": str(hf_dir),
            "truncated": int(sum(p[3] for p in parts)),
            "tokens": int(sum(p[4] for p in parts)),
            "padded_share": round(1 - sum(p[4] for p in parts) / max(1, sum(p[5] for p in parts)), 4),
            "max_tokens": int(max_tokens),
            "device": str(state.device),
        },
    }


def run(cfg: DictConfig) -> Path:
    check_config(cfg)
    state = PartialState()
    final = stage_dir(cfg, "embed")
    # Every process decides alike before any collective call: nothing is written until after the gather.
    if not cfg.get("force", False) and is_complete(final, stage_hash(cfg, "embed")):
        log.info("embed: up to date (%s), skipped", final)
        return final
    model = applied_model(cfg.embed.get("model"))
    # Before any work: an applied model whose texts were rendered otherwise is one line (every process alike).
    record = check_applicable(RunSpec.from_config(cfg), model) if model is not None else None
    started = time.time()
    result = compute(cfg, state)
    if state.is_main_process:

        def build(tmp: Path) -> dict:
            frame = embeddings_frame(cfg.dataset.id_column, result["client_id"], result["matrix"])
            write_embeddings(embeddings_path(tmp), frame)
            write_text_hashes(tmp, result["client_id"], result["digests"])
            seconds = time.time() - started
            counts = result["counts"]
            log.info(
                "embed: %d clients, %d real tokens (%.1f%% of the batches' positions padding) in %.1f s "
                "(%.0f real tokens/s incl. model load)",
                counts["clients"],
                counts["tokens"],
                100 * counts["padded_share"],
                seconds,
                counts["tokens"] / max(seconds, 1e-9),
            )
            return {
                **counts,
                "row_name": row_name(model, cfg.embed.get("name"), record),
                "embed_seconds": round(seconds, 3),
                "tokens_per_s": round(counts["tokens"] / max(seconds, 1e-9), 1),
            }

        run_stage(cfg, "embed", build)
    state.wait_for_everyone()
    return final


def summary_line(c: dict, seconds: float, folder: Path) -> str:
    rate = f", {figure(c['tokens'] / c['embed_seconds'])} tokens/s" if c.get("embed_seconds") else ""
    reused = f" ({c['recomputed']:,} recomputed, {c['reused']:,} reused)" if c.get("reused") else ""
    return f"{c['clients']:,} clients x {c['dim']}{reused}{rate}"


main = stage_main(run, summary_line)

if __name__ == "__main__":
    main()
