"""Packed pretraining batches (lm/packing.py through the `llm4trx_text` loader): a batch's clients in fewer
rows, each attending only to itself, with exactly the next-token targets, loss and gradients of one client per
row; through the pretrain stage the same losses step by step with less padding; one-line config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures_lm import SMOKE_TEST_SCHEDULE, build_lm_inputs, smoke_cfg, train_tokenizer
from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError
from llm4trx.lm import foundry_config
from llm4trx.lm.foundry_plugins import RealTokensCollator
from llm4trx.lm.packing import PackedCollator, block_causal_mask, clients_in_batch, pack_rows, split_rows

LENGTHS = [50, 7, 31, 64, 12, 33, 20, 3]  # 8 clients of a batch, width 64


def test_pack_rows_is_first_fit_decreasing_within_the_width():
    rows = pack_rows(LENGTHS, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(LENGTHS)))  # every client exactly once
    assert all(sum(LENGTHS[i] for i in row) <= 64 for row in rows)
    assert rows == [[3], [0, 4], [5, 2], [6, 1, 7]]  # longest first, each into the first row it fits
    assert pack_rows(LENGTHS, 64) == rows  # deterministic
    assert len(pack_rows([5] * 6, 10)) == 3
    with pytest.raises(ValueError, match="65 tokens does not fit a packed row of 64"):
        pack_rows([65], 64)


def test_block_causal_mask_keeps_each_client_to_its_own_past():
    segments = torch.tensor([[0, 0, 1, 1, 1, -1]])
    allowed = block_causal_mask(segments, "bool")[0, 0]
    assert allowed.tolist() == [
        [True, False, False, False, False, False],
        [True, True, False, False, False, False],
        [False, False, True, False, False, False],
        [False, False, True, True, False, False],
        [False, False, True, True, True, False],
        [False, False, False, False, False, True],  # padding sees only itself (no empty softmax row)
    ]
    additive = block_causal_mask(segments, "float")[0, 0]
    assert torch.equal(additive == 0, allowed) and additive.min() == torch.finfo(torch.float32).min


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(["a b c d e f g h"] * 4, tmp_path_factory.mktemp("packing") / "tok", vocab_size=120)


def examples() -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    return [torch.tensor(rng.integers(5, 120, n)) for n in LENGTHS]


def collators(tokenizer, mask: str):
    import transformers

    base = RealTokensCollator(transformers.DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False))
    return base, PackedCollator(base, 64, tokenizer.pad_token_id, mask)


def tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=120,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config)


def test_packed_batch_counts_the_same_clients_and_targets(tokenizer):
    plain, packed = (c(examples()) for c in collators(tokenizer, "bool"))
    assert packed["input_ids"].shape == (4, 64) and plain["input_ids"].shape == (8, 64)
    assert clients_in_batch(packed) == 8 and sum(packed["samples"]) == 8
    assert sum(packed["total_tokens"]) == sum(plain["total_tokens"]) == sum(LENGTHS)
    assert sum(packed["loss_generating_tokens"]) == sum(plain["loss_generating_tokens"]) == sum(LENGTHS) - 8
    assert sorted(n for row in packed["doc_lengths"] for n in row) == sorted(LENGTHS)
    # Row 1 holds clients 0 and 4: positions restart, client 4's first token is no target.
    assert packed["position_ids"][1, :50].tolist() == list(range(50))
    assert packed["position_ids"][1, 50:62].tolist() == list(range(12))
    assert packed["labels"][1, 50] == -100 and packed["labels"][1, 51] == examples()[4][1]
    assert torch.equal(packed["input_ids"][1, 50:62], examples()[4])
    assert (packed["input_ids"][1, 62:] == tokenizer.pad_token_id).all() and (packed["labels"][1, 62:] == -100).all()
    # Composer's split: one microbatch when the rows fit, else by rows with the per-row lists alongside.
    assert split_rows(packed, 8) == [packed]
    halves = split_rows(packed, 2)
    assert [len(h["input_ids"]) for h in halves] == [2, 2] and [sum(h["samples"]) for h in halves] == [3, 5]


@pytest.mark.parametrize("attn, mask", [("sdpa", "bool"), ("eager", "float")])
def test_packed_rows_give_the_loss_and_gradients_of_one_client_per_row(tokenizer, attn, mask):
    plain, packed = (c(examples()) for c in collators(tokenizer, mask))
    model = tiny_llama(attn)
    losses, grads = [], []
    for batch in (plain, packed):
        model.zero_grad()
        keys = ("input_ids", "labels", "attention_mask", "position_ids")
        out = model(**{k: batch[k] for k in keys if k in batch})
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(losses[0], losses[1], atol=1e-6), losses
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    # Without the mask the rows would attend across clients: a different loss (the test can fail).
    leaky = model(input_ids=packed["input_ids"], labels=packed["labels"], position_ids=packed["position_ids"]).loss
    assert abs(float(leaky) - float(losses[0])) > 1e-4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=mpt_125m"], "trainer.packing=true needs a Hugging Face model (model=mpt_125m is native MPT)"),
        (["model.attn_implementation=flash_attention_2"], "reads no 4D attention mask"),
        (["trainer.contrastive.weight=0.5"], "the contrastive term crops one client per row"),
        (["trainer.backend=hf"], "packs the foundry backend's batches (here trainer.backend=hf)"),
    ],
)
def test_packing_refuses_models_it_cannot_mask_in_one_line(overrides, message):
    cfg = compose(["experiment=smoke", "trainer.packing=true", *overrides])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        foundry_config.packing(cfg)
    assert foundry_config.packing(compose(["experiment=smoke", "trainer.packing=false"])) is None
    assert foundry_config.packing(compose(["experiment=smoke"])) == {"width": 640, "mask": "bool"}  # the preset packs


@pytest.mark.slow
def test_pretraining_packed_follows_the_unpacked_losses_with_less_padding(tmp_path):
    """The pretrain stage in-process on the same inputs, 6 batches in microbatches of 2 rows, and packed in
    microbatches of 1 row: the same losses step by step (float summation order apart), fewer padded positions
    (none with 1 row per microbatch: each is cut to its own row), the same clients and tokens seen."""
    from llm4trx.core.stage import read_success
    from llm4trx.data.curves import read_losses
    from llm4trx.pretrain import run

    schedule = [s for s in SMOKE_TEST_SCHEDULE if "microbatch" not in s and "max_duration" not in s]
    runs = {}
    for packed, rows in ((False, 2), (True, 2), (True, 1)):
        cfg = smoke_cfg(
            tmp_path / f"packed_{packed}_{rows}",
            *schedule,
            "trainer.max_duration=6ba",
            "trainer.eval_interval=3ba",
            f"trainer.device_train_microbatch_size={rows}",
            "max_seq_len=128",
            f"trainer.packing={packed}",
        )
        build_lm_inputs(cfg)
        folder = run(cfg)
        runs[packed, rows] = (read_success(folder)["counts"], read_losses(folder))
    (plain, plain_lines), (packed, _), (single, _) = runs[False, 2], runs[True, 2], runs[True, 1]
    assert packed["packing"] is True and plain["packing"] is False
    assert packed["samples_seen"] == plain["samples_seen"] == single["samples_seen"] == 48
    assert packed["tokens_seen"] == plain["tokens_seen"] == single["tokens_seen"]
    assert single["padded_share"] == 0 < packed["padded_share"] < plain["padded_share"]
    for _, lines in (runs[True, 2], runs[True, 1]):
        assert [(x["step"], x["split"]) for x in lines] == [(x["step"], x["split"]) for x in plain_lines]
        for a, b in zip(plain_lines, lines):
            assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)  # seen: within 5e-7
