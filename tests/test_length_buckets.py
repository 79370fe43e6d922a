"""Length-bucketed pretraining batches (lm/length_buckets.py through the `llm4trx_text` loader): the same
samples per epoch as batches of random clients, far less padding, deterministic for a seed, resumable from
Composer's streaming state mid-window, with several dataloader workers; real-token counts per batch."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from fixtures_lm import train_tokenizer, write_mds
from llm4trx.core.config import compose
from llm4trx.lm import foundry_config, foundry_plugins
from llm4trx.lm.length_buckets import bucketed, window_order

BATCH = 4
N_SAMPLES = 90  # not a multiple of BATCH x window: the last window is partial, the last batch too


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tokenizer and an MDS split whose sample i starts with token id 10 + i (its id) and has a length from
    3 to 60 tokens, in no length order."""
    root = tmp_path_factory.mktemp("buckets")
    tok = train_tokenizer(["a b c d e f g h"] * 4, root / "tokenizer", vocab_size=200)
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 61, N_SAMPLES)
    samples = [(f"c{i:03d}", np.array([10 + i] + [5] * (int(n) - 1))) for i, n in enumerate(lengths)]
    write_mds(root / "mds", samples)
    return {"root": root, "tokenizer": tok, "lengths": lengths}


def split_copy(data, name: str) -> str:
    """A fresh copy of the split: streaming allows one live dataset per local folder in a process."""
    target = data["root"] / name
    shutil.copytree(data["root"] / "mds", target)
    return str(target)


def loader(data, name: str, window: int, shuffle: bool = True, seed: int = 7, workers: int = 0):
    cfg = compose(
        [
            f"paths.output_root={data['root']}",
            "max_seq_len=64",
            f"seed={seed}",
            f"trainer.length_bucketing={window > 0}",
            f"trainer.bucket_window={max(window, 1)}",
            f"trainer.num_workers={workers}",
            "trainer.packing=false",  # one client per row: the rows' first tokens name the batch's samples
        ]
    )
    section = foundry_config.loader_section(cfg, data["root"] / name, train=shuffle)
    section["dataset"]["local"] = split_copy(data, name)
    assert section.pop("name") == "llm4trx_text" and section["bucket_window"] == window
    return foundry_plugins.build_text_dataloader_locked(
        **section, tokenizer=data["tokenizer"], device_batch_size=BATCH
    ).dataloader


def ids(batch) -> list[int]:
    return [int(i) - 10 for i in batch["input_ids"][:, 0]]


def epoch_batches(dl) -> list[list[int]]:
    return [ids(batch) for batch in dl]


def padded_share(batches, lengths) -> float:
    real = sum(int(lengths[i]) for b in batches for i in b)
    return 1 - real / sum(len(b) * max(int(lengths[i]) for i in b) for b in batches)


def test_window_order_sorts_full_batches_and_keeps_the_partial_tail():
    lengths = [9, 1, 8, 2, 7, 3, 100]  # two full batches of 3, then one sample
    assert window_order(lengths, 3, None).tolist() == [1, 3, 5, 4, 2, 0, 6]
    order = window_order(lengths, 3, np.random.default_rng(0)).tolist()
    assert order[-1] == 6 and sorted(order) == list(range(7))
    assert {frozenset(order[:3]), frozenset(order[3:6])} == {frozenset({1, 3, 5}), frozenset({4, 2, 0})}
    # Resuming: skipping k batches of the result gives the rest of the same sequence.
    items = [[0] * n for n in [5, 3, 9, 1, 4, 4, 7, 2, 6, 8]]
    full = list(bucketed(items, 2, 3, seed=[1, 2]))
    assert list(bucketed(items, 2, 3, skip_batches=2, seed=[1, 2])) == full[4:]


def test_bucketed_epochs_hold_the_same_samples_with_far_less_padding(data):
    lengths = data["lengths"]
    plain, buckets = loader(data, "plain", 0), loader(data, "bucketed", 8)
    for _ in range(2):  # two epochs: streaming reshuffles each
        want, got = epoch_batches(plain), epoch_batches(buckets)
        assert Counter(i for b in got for i in b) == Counter(i for b in want for i in b)
        assert len(got) == len(want) == N_SAMPLES // BATCH  # drop_last drops the same partial batch
        assert padded_share(got, lengths) < 0.5 * padded_share(want, lengths)
        assert padded_share(got, lengths) < 0.15


def test_bucketed_batches_are_deterministic_for_a_seed_and_differ_across_seeds(data):
    first = epoch_batches(loader(data, "seed7a", 8, seed=7))
    assert epoch_batches(loader(data, "seed7b", 8, seed=7)) == first
    assert epoch_batches(loader(data, "seed8", 8, seed=8)) != first


def test_batch_counts_are_real_tokens_and_eval_keeps_every_sample(data):
    dl = loader(data, "eval", 8, shuffle=False)
    seen = []
    for batch in dl:
        rows = ids(batch)
        seen += rows
        assert batch["total_tokens"] == [int(data["lengths"][i]) for i in rows]
        assert batch["loss_generating_tokens"] == [int(data["lengths"][i]) - 1 for i in rows]
        assert batch["input_ids"].shape[1] == max(batch["total_tokens"])  # padded to the batch's longest
    assert sorted(seen) == list(range(N_SAMPLES))  # eval: no drop_last, every client once


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_window_continues_the_same_batches(data, workers):
    whole = epoch_batches(loader(data, f"whole{workers}", 3, workers=workers))
    for done in (5, 6):  # mid-window and at a window boundary (3 batches x workers)
        first = loader(data, f"first{workers}-{done}", 3, workers=workers)
        it = iter(first)
        trained = [ids(next(it)) for _ in range(done)]
        assert trained == whole[:done]
        # What Composer saves at a checkpoint: streaming's state with the epoch's global sample count.
        state = first.dataset.state_dict(done * BATCH, True)
        del it
        resumed = loader(data, f"resumed{workers}-{done}", 3, workers=workers)
        resumed.dataset.load_state_dict(state)
        assert epoch_batches(resumed) == whole[done:]
