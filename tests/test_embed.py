"""Embedding inference: pooling, the single-process run, and two ranks giving the same file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import llm4trx
from embed_fixtures import write_all, write_tiny_llama
from llm4trx import embed
from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError, DataError
from llm4trx.lm.pooling import pool
from llm4trx.core.stage import read_success, stage_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModel, AutoTokenizer

    folder = write_tiny_llama(tmp_path_factory.mktemp("hf"), ["01-02 5411 12\n01-03 6011 250"] * 50, layers=3)
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize(
    "pooling,layer_slice",
    [("mean", [-1, None]), ("last", [-1, None]), ("max", [-1, None]), ("mean_max", [-1, None]), ("mean", [1, 3])],
)
def test_batched_pooling_equals_unpadded_per_sequence(tiny, padding_side, pooling, layer_slice):
    tokenizer, model = tiny
    rng = np.random.default_rng(0)
    sequences = [rng.integers(3, len(tokenizer), n).tolist() for n in (3, 17, 9, 30, 1)]
    batched = embed.embed_sequences(
        model,
        tokenizer.pad_token_id,
        sequences,
        [[0, 1, 2, 3, 4]],
        pooling,
        layer_slice,
        padding_side,
        torch.device("cpu"),
        progress=False,
    )
    with torch.no_grad():
        for i, seq in enumerate(sequences):
            ids = torch.tensor([seq])
            out = model(input_ids=ids, output_hidden_states=True)
            hidden = torch.stack(out.hidden_states[slice(*layer_slice)]).mean(0)[0]
            means_maxes = torch.cat([hidden.mean(0), hidden.amax(0)])
            want = {"mean": hidden.mean(0), "last": hidden[-1], "max": hidden.amax(0), "mean_max": means_maxes}[pooling]
            np.testing.assert_allclose(batched[i], want.numpy(), atol=1e-5, rtol=1e-4)
    # The padded rows really differ in length, so a pooling that ignored the mask would have failed above.
    assert len({len(s) for s in sequences}) == len(sequences)


def test_pooling_ignores_nan_in_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [float("nan"), float("nan")]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool([hidden], mask, "mean", [-1, None]), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(pool([hidden], mask, "last", [-1, None]), torch.tensor([[3.0, 4.0]]))
    assert torch.equal(pool([hidden], mask, "max", [-1, None]), torch.tensor([[3.0, 4.0]]))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_segment_pooling_pools_contiguous_parts_in_order(padding_side):
    """Each row's real tokens split into equal contiguous parts (the later parts take the remainder), whichever
    side the padding is on, each part pooled (mean, its last token, or its maximum); NaN in padding is ignored; one segment
    is plain pooling."""
    torch.manual_seed(0)
    lengths = [8, 5, 3, 2]
    hidden = torch.randn(4, 8, 3)
    mask = torch.zeros(4, 8, dtype=torch.long)
    real = []
    for row, n in enumerate(lengths):
        where = slice(0, n) if padding_side == "right" else slice(8 - n, 8)
        mask[row, where] = 1
        hidden[row, mask[row] == 0] = float("nan")
        real.append(hidden[row, where])
    got = pool([hidden], mask, "mean", [-1, None], segments=2)
    assert got.shape == (4, 6)
    bounds = {8: [(0, 4), (4, 8)], 5: [(0, 3), (3, 5)], 3: [(0, 2), (2, 3)], 2: [(0, 1), (1, 2)]}
    for row, n in enumerate(lengths):
        want = torch.cat([real[row][a:b].mean(0) for a, b in bounds[n]])
        torch.testing.assert_close(got[row], want)
    # Order matters: the same tokens reversed give another vector (one mean could not tell them apart).
    flipped = pool([hidden.flip(1)], mask.flip(1), "mean", [-1, None], segments=2)
    assert not torch.allclose(flipped[0], got[0])
    torch.testing.assert_close(
        pool([hidden], mask, "mean", [-1, None], segments=1), pool([hidden], mask, "mean", [-1, None])
    )
    # Fewer real tokens than segments: the empty parts are zero, not NaN.
    assert torch.isfinite(pool([hidden], mask, "mean", [-1, None], segments=4)).all()
    # last pooling per part: the last real token of each part.
    lasts = pool([hidden], mask, "last", [-1, None], segments=2)
    for row, n in enumerate(lengths):
        torch.testing.assert_close(lasts[row], torch.cat([real[row][b - 1] for _, b in bounds[n]]))
    assert torch.isfinite(pool([hidden], mask, "last", [-1, None], segments=4)).all()
    # max pooling per part: the elementwise maximum of each part; empty parts zero.
    maxes = pool([hidden], mask, "max", [-1, None], segments=2)
    for row, n in enumerate(lengths):
        torch.testing.assert_close(maxes[row], torch.cat([real[row][a:b].amax(0) for a, b in bounds[n]]))
    both = pool([hidden], mask, "mean_max", [-1, None], segments=2)  # the means, then the maxima
    torch.testing.assert_close(both, torch.cat([got, maxes], dim=1))
    short = pool([hidden], mask, "max", [-1, None], segments=4)[3].reshape(4, 3)  # 2 real tokens, 4 parts
    assert torch.isfinite(short).all() and (short == 0).all(dim=1).sum() == 2


def test_length_sorted_batches_cover_every_index_once():
    lengths = [5, 50, 1, 30, 30, 7, 2]
    batches = embed.length_sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [lengths[i] for b in batches for i in b] == sorted(lengths, reverse=True)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed") / "outputs"
    overrides = [
        f"paths.output_root={root}",
        "progress=false",
        "embed.batch_size=8",
        "dataset.n_clients=60",
        "dataset.max_events=60",
    ]
    cfg = compose(overrides)
    write_all(cfg)
    return overrides, cfg


def test_embed_single_process_writes_every_client(small_run):
    overrides, cfg = small_run
    folder = embed.run(cfg)
    frame = pd.read_parquet(folder / "embeddings.parquet")
    text_ids = pd.concat(
        [
            pd.read_json(stage_dir(cfg, "text") / f"{s}.jsonl", lines=True, dtype={"client_id": str})
            for s in ("train", "val", "test")
        ]
    )["client_id"]
    assert list(frame.columns[:3]) == [cfg.dataset.id_column, "emb_0000", "emb_0001"]
    assert cfg.embed.pooling == "mean_max"  # the smoke preset's: a 64-wide mean and max per segment
    assert frame.shape == (len(text_ids), 1 + cfg.embed.segments * 64 * 2)
    assert pd.api.types.is_string_dtype(frame[cfg.dataset.id_column])
    assert sorted(frame[cfg.dataset.id_column]) == sorted(text_ids)
    assert (frame.dtypes.iloc[1:] == np.float32).all() and np.isfinite(frame.iloc[:, 1:].to_numpy()).all()
    counts = read_success(folder)["counts"]
    assert counts["world_size"] == 1 and counts["rows_per_rank"] == [len(text_ids)]


def test_segments_widen_the_vectors_and_their_first_part_is_the_history_start(small_run):
    """embed.segments=2 (mean pooling): vectors twice as wide, none reused from the one-mean embed
    (embed.segments=1) of the same texts, and the one mean is a weighted average of the two parts' means."""
    overrides, _ = small_run
    mean = [*overrides, "embed.pooling=mean"]
    plain = pd.read_parquet(embed.run(compose([*mean, "embed.segments=1"])) / "embeddings.parquet")
    cfg = compose([*mean, "embed.segments=2"])
    folder = embed.run(cfg)
    halves = pd.read_parquet(folder / "embeddings.parquet")
    assert halves.shape == (len(plain), 1 + 2 * 64)
    assert read_success(folder)["counts"].get("reused", 0) == 0
    assert halves[cfg.dataset.id_column].tolist() == plain[cfg.dataset.id_column].tolist()
    first, second = halves.iloc[:, 1:65].to_numpy(), halves.iloc[:, 65:].to_numpy()
    assert not np.allclose(first, second)
    # The whole-history mean lies between the two parts' means (a weighted average of them, per dimension).
    whole = plain.iloc[:, 1:].to_numpy()
    lo, hi = np.minimum(first, second), np.maximum(first, second)
    assert ((whole >= lo - 1e-4) & (whole <= hi + 1e-4)).all()


def test_embed_two_processes_match_single_process(small_run):
    overrides, cfg = small_run
    folder = embed.run(cfg)
    single = pd.read_parquet(folder / "embeddings.parquet")
    env = {**os.environ, "PYTHONPATH": str(Path(llm4trx.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "llm4trx.embed",
        *overrides,
        "force=true",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = read_success(folder)["counts"]
    assert counts["world_size"] == 2
    assert len(counts["rows_per_rank"]) == 2 and min(counts["rows_per_rank"]) > 0
    assert sum(counts["rows_per_rank"]) == len(single)
    double = pd.read_parquet(folder / "embeddings.parquet")
    assert double[cfg.dataset.id_column].tolist() == single[cfg.dataset.id_column].tolist()
    np.testing.assert_allclose(double.iloc[:, 1:].to_numpy(), single.iloc[:, 1:].to_numpy(), atol=1e-5)


def test_duplicate_client_across_splits_is_rejected(small_run, tmp_path):
    _, cfg = small_run
    text_dir = stage_dir(cfg, "text")
    copy = tmp_path / "text"
    copy.mkdir()
    for split in ("train", "val", "test"):
        copy.joinpath(f"{split}.jsonl").write_text(text_dir.joinpath(f"{split}.jsonl").read_text())
    first = json.loads(copy.joinpath("train.jsonl").read_text().splitlines()[0])
    with open(copy / "test.jsonl", "a") as f:
        f.write(json.dumps(first) + "\n")
    with pytest.raises(DataError, match=first["client_id"]):
        embed.read_texts(copy)


def test_bad_embed_config_is_rejected_before_work(out_root):
    with pytest.raises(ConfigError, match="embed.pooling"):
        embed.run(compose([f"paths.output_root={out_root}", "embed.pooling=median"]))
    assert not out_root.exists()
