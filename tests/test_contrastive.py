"""NTP + contrastive pretraining (trainer.contrastive, lm/contrastive.py, lm/foundry_plugins.py): the crops, the
settings' checks, weight 0 = the plain next-token loss, the contrastive part learning, and the stage end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fixtures_lm import build_lm_inputs, make_texts, smoke_cfg, train_tokenizer, write_model_config

from llm4trx.core.errors import ConfigError
from llm4trx.core.stage import hash_payload, read_success
from llm4trx.lm.contrastive import ContrastiveSettings, crop_views, settings_from

SETTINGS = {"weight": 1.0, "views": 2, "min_fraction": 0.3, "max_fraction": 0.7, "temperature": 0.1}


def settings(**changes) -> ContrastiveSettings:
    return settings_from({**SETTINGS, **changes})


@pytest.mark.parametrize("views,lo,hi", [(2, 0.3, 0.7), (3, 0.1, 1.0), (2, 1.0, 1.0)])
def test_crops_are_contiguous_spans_of_the_real_tokens(views, lo, hi):
    lengths = torch.tensor([1, 2, 5, 10, 17, 20])
    # Real token j of row i is 100 * i + j + 1; padding is 0, so any padded place shows up.
    ids = torch.zeros(len(lengths), 20, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, :n] = 100 * i + torch.arange(n) + 1
    s = settings(views=views, min_fraction=lo, max_fraction=hi)
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(30):
        crops, mask, owner = crop_views(ids, lengths, s, generator=gen)
        assert owner.tolist() == [i for i in range(len(lengths)) for _ in range(views)]
        assert crops.shape == mask.shape and crops.shape[0] == len(lengths) * views
        for row, (crop, m, i) in enumerate(zip(crops, mask.bool(), owner.tolist())):
            real = crop[m]
            n = int(lengths[i])
            size = len(real)
            assert max(1, math.ceil(lo * n)) <= size <= max(math.ceil(lo * n), math.floor(hi * n))
            assert m[:size].all() and not m[size:].any()  # right padded
            assert (real > 0).all(), "a crop holds padding"
            first = int(real[0]) - 100 * i - 1
            assert real.tolist() == list(range(100 * i + first + 1, 100 * i + first + size + 1))  # one span
            assert 0 <= first and first + size <= n
            if i == 4:
                starts.add(first)
    assert len(starts) > 3 or lo == hi == 1.0  # crops move around


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"weight": -1.0}, "weight"),
        ({"weight": "x"}, "weight"),
        ({"views": 1}, "views"),
        ({"views": 2.5}, "views"),
        ({"min_fraction": 0.0}, "min_fraction"),
        ({"min_fraction": 0.8, "max_fraction": 0.5}, "min_fraction"),
        ({"max_fraction": 1.5}, "max_fraction"),
        ({"temperature": 0.0}, "temperature"),
        ({"pooling": "median"}, "embed.pooling"),
    ],
)
def test_bad_settings_are_one_line_config_errors(changes, key):
    with pytest.raises(ConfigError) as err:
        settings(**changes)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_weight_zero_or_no_section_is_off():
    assert settings_from(None) is None
    assert settings(weight=0.0) is None and settings(weight=0) is None
    assert settings(weight=0.5).weight == 0.5


def tiny_model(tmp_path, contrastive=None, seed=0):
    from llm4trx.lm.foundry_plugins import HFCausalLMWithFlops

    tok = train_tokenizer(make_texts(40), tmp_path / "tok", vocab_size=300)
    config = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    config |= {"num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tok), "tie_word_embeddings": False}
    folder = write_model_config(tmp_path / "config", {**config, "pad_token_id": tok.pad_token_id})
    torch.manual_seed(seed)
    model = HFCausalLMWithFlops(
        tokenizer=tok,
        pretrained_model_name_or_path=str(folder),
        pretrained=False,
        trust_remote_code=False,
        attn_implementation="sdpa",
        contrastive=contrastive,
    )
    return model, tok


def fixed_batch(tok, n=8, seed=0):
    """Rows of distinct clients as llm-foundry's text collator gives them: right padded, pads labelled -100."""
    import transformers

    texts = make_texts(n, seed=seed, min_events=4, max_events=9)
    rows = [
        torch.tensor([tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id])
        for t in texts
    ]
    collate = transformers.DataCollatorForLanguageModeling(tokenizer=tok, mlm=False)
    return collate(rows)


def test_weight_zero_gives_exactly_the_next_token_loss_and_the_ntp_part_is_unchanged(tmp_path):
    plain, tok = tiny_model(tmp_path)
    off, _ = tiny_model(tmp_path, contrastive={**SETTINGS, "weight": 0.0})
    on, _ = tiny_model(tmp_path, contrastive=SETTINGS)
    assert off.contrastive is None and on.contrastive is not None
    batch = fixed_batch(tok)
    for m in (plain, off, on):
        m.train()
    reference = plain.loss(plain(dict(batch)), batch)
    loss_off = off.loss(off(dict(batch)), batch)
    assert isinstance(loss_off, torch.Tensor) and torch.equal(loss_off, reference)
    parts = on.loss(on(dict(batch)), batch)
    assert set(parts) == {"total", "ntp", "contrastive"}
    assert torch.equal(parts["ntp"], reference)  # the next-token forward is the same computation
    assert parts["contrastive"] > 0 and torch.allclose(parts["total"], parts["ntp"] + parts["contrastive"])
    on.eval()  # evaluation: next-token loss only
    assert isinstance(on.loss(on(dict(batch)), batch), torch.Tensor)


def test_the_contrastive_part_falls_on_a_fixed_batch(tmp_path):
    model, tok = tiny_model(tmp_path, contrastive={**SETTINGS, "weight": 1.0})
    batch = fixed_batch(tok, n=8)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(1)
    history = []
    for _ in range(25):
        parts = model.loss(model(dict(batch)), batch)
        optimizer.zero_grad()
        parts["total"].backward()
        optimizer.step()
        history.append(float(parts["contrastive"]))
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.7 * first, history


def test_pretrain_hash_covers_the_term_and_embed_pooling_only_when_on(tmp_path):
    off = smoke_cfg(tmp_path)
    off_pool = smoke_cfg(tmp_path, "embed.pooling=last")
    assert hash_payload(off, "pretrain") == hash_payload(off_pool, "pretrain")
    on = smoke_cfg(tmp_path, "trainer.contrastive.weight=0.5")
    on_pool = smoke_cfg(tmp_path, "trainer.contrastive.weight=0.5", "embed.pooling=last")
    assert hash_payload(on, "pretrain") != hash_payload(off, "pretrain")
    assert hash_payload(on, "pretrain") != hash_payload(on_pool, "pretrain")


def test_train_config_carries_the_term_only_when_on(tmp_path):
    from llm4trx.lm.foundry_config import model_section

    tok = {"vocab_size": 100, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}
    assert "contrastive" not in model_section(smoke_cfg(tmp_path), tok, tmp_path)
    section = model_section(smoke_cfg(tmp_path, "trainer.contrastive.weight=2", "embed.pooling=last"), tok, tmp_path)
    assert section["contrastive"] == {**SETTINGS, "weight": 2, "pooling": "last", "layer_slice": [-1, None]}
    with pytest.raises(ConfigError, match="trainer.contrastive.views"):
        model_section(smoke_cfg(tmp_path, "trainer.contrastive.weight=1", "trainer.contrastive.views=1"), tok, tmp_path)


def test_hf_backend_with_the_term_stops_before_writing(tmp_path):
    from llm4trx.pretrain import check_inputs

    cfg = smoke_cfg(tmp_path / "out", "trainer.contrastive.weight=1", "trainer.backend=hf")
    build_lm_inputs(cfg, n_train=16, n_val=4)
    with pytest.raises(ConfigError, match="foundry backend"):
        check_inputs(cfg)


@pytest.mark.slow
def test_pretrain_with_the_term_trains_end_to_end_and_logs_both_parts(tmp_path):
    from llm4trx.pretrain import run

    cfg = smoke_cfg(
        tmp_path / "out",
        "trainer.contrastive.weight=1",
        "trainer.packing=false",  # the term crops one client per row (the smoke preset packs)
        "trainer.max_duration=12ba",
        "trainer.eval_interval=12ba",
        "trainer.save_interval=12ba",
        "trainer.eval_first=false",
        "trainer.global_train_batch_size=8",
        "trainer.device_train_microbatch_size=8",
    )
    build_lm_inputs(cfg, n_train=48, n_val=8)
    folder = run(cfg)
    assert read_success(folder)["counts"]["steps"] == 12
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 13))
    for r in train:
        assert set(r) == {"step", "split", "loss", "ntp", "contrastive"}
        assert r["loss"] == pytest.approx(r["ntp"] + r["contrastive"], rel=1e-5)
        assert math.isfinite(r["contrastive"]) and r["contrastive"] > 0
    assert [set(r) for r in rows if r["split"] == "eval"] == [{"step", "split", "loss"}]
