"""Stage `tokenizer`: a domain BPE trained on train texts only; a local pretrained tokenizer validated."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from canonical_data import canonical_events, canonical_run
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llm4trx import text as text_stage
from llm4trx import tokenizer as tokenizer_stage
from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError, StageInputMissing
from llm4trx.core.stage import read_success, stage_dir
from llm4trx.render.tokencount import get_counter

MARKER = "QZXJVKWPFQZXJVKWPF"  # a categorical value only test clients have
BPE = ["text=flat", "tokenizer=domain_bpe", "tokenizer.vocab_size=400", "text.max_tokens=2000"]


@pytest.fixture(scope="module")
def domain_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    events = canonical_events("rosbank", 30, seed=1, max_events=60)
    cfg = canonical_run(root, "rosbank", BPE, events=events)
    splits = pd.read_parquet(stage_dir(cfg, "prepare") / "splits.parquet")
    test_ids = splits.loc[splits["split"] == "test", "client_id"]
    events.loc[events["client_id"].isin(test_ids), "trx_category"] = MARKER
    canonical_run(root, "rosbank", BPE, events=events)
    text_stage.run(cfg)
    return cfg, tokenizer_stage.run(cfg)


def test_domain_bpe_has_special_tokens_and_round_trips(domain_run):
    cfg, out = domain_run
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.is_fast and len(tok) <= 400
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|endoftext|>", "<|pad|>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    texts = pd.read_json(stage_dir(cfg, "text") / "val.jsonl", lines=True)["text"].tolist()
    for text in texts[:3] + ["Ünïcode ✓ 1234.50\n"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    domain = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert domain < sum(len(t.encode()) for t in texts) / 1.5  # it learned merges


def test_domain_bpe_never_sees_test_texts(domain_run):
    cfg, out = domain_run
    tok = AutoTokenizer.from_pretrained(str(out))
    test_text = pd.read_json(stage_dir(cfg, "text") / "test.jsonl", lines=True)["text"].iloc[0]
    assert MARKER in test_text
    assert len(tok(MARKER, add_special_tokens=False)["input_ids"]) >= 6  # unmerged: never trained on
    n_train = sum(1 for _ in open(stage_dir(cfg, "text") / "train.jsonl"))
    assert read_success(out)["counts"]["trained_on_clients"] == n_train
    assert tokenizer_stage.run(cfg) == out  # rerun: skipped, no error on the existing folder


def test_domain_tokenizer_as_count_tokenizer(domain_run, tmp_path):
    _, tok_dir = domain_run
    cfg = canonical_run(
        tmp_path,
        "age_pred",
        ["text=flat", f"text.count_tokenizer={tok_dir}", "text.max_tokens=150"],
        n_clients=8,
        max_events=60,
    )
    out = text_stage.run(cfg)
    frame = pd.read_json(out / "train.jsonl", lines=True)
    assert (frame["n_tokens"] <= 150).all()
    assert (frame["n_tokens"].to_numpy() == get_counter(str(tok_dir)).count(frame["text"].tolist())).all()


def save_tokenizer(domain_dir, folder, **specials):
    base = AutoTokenizer.from_pretrained(str(domain_dir)).backend_tokenizer
    PreTrainedTokenizerFast(tokenizer_object=base, **specials).save_pretrained(str(folder))
    return folder


def test_pretrained_repairs_pad_and_bos_from_eos(domain_run, tmp_path):
    _, domain_dir = domain_run
    local = save_tokenizer(domain_dir, tmp_path / "local", eos_token="<|endoftext|>")
    cfg = compose([f"paths.output_root={tmp_path}/o", "tokenizer=pretrained", f"tokenizer.path={local}"])
    out = tokenizer_stage.run(cfg)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.pad_token == tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert read_success(out)["counts"]["repairs"] == ["pad_token=eos_token", "bos_token=eos_token"]


def test_pretrained_bad_inputs(domain_run, tmp_path):
    _, domain_dir = domain_run
    no_eos = save_tokenizer(domain_dir, tmp_path / "no_eos", pad_token="<|pad|>")
    for path, message in [(no_eos, "has no eos token"), (tmp_path / "missing", "is not a directory")]:
        cfg = compose([f"paths.output_root={tmp_path}/o", "tokenizer=pretrained", f"tokenizer.path={path}"])
        with pytest.raises(ConfigError, match=message):
            tokenizer_stage.run(cfg)
        assert not stage_dir(cfg, "tokenizer").exists()
    with pytest.raises(ConfigError, match="needs tokenizer.path"):
        tokenizer_stage.run(compose([f"paths.output_root={tmp_path}/o", "tokenizer=pretrained"]))
    with pytest.raises(StageInputMissing, match="text"):
        tokenizer_stage.run(compose([f"paths.output_root={tmp_path}/o"]))


def test_fields_tokenizer_gives_one_id_per_word_and_unk_for_unseen(tmp_path):
    from llm4trx import shards as shards_stage

    cfg = canonical_run(
        tmp_path,
        "rosbank",
        ["text=fields", "tokenizer=fields", "tokenizer.min_frequency=1", "max_seq_len=2000"],
        n_clients=20,
        max_events=40,
    )
    text_stage.run(cfg)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_stage.run(cfg)))
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|bos|>",
        "<|endoftext|>",
        "<|pad|>",
        "<|unk|>",
    )
    frame = pd.read_json(stage_dir(cfg, "text") / "val.jsonl", lines=True)
    for text, n in zip(frame["text"], frame["n_tokens"]):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == n == len(text.split())
    assert tok("m0000 d0", add_special_tokens=False)["input_ids"][0] == tok.unk_token_id
    train = pd.read_json(stage_dir(cfg, "text") / "train.jsonl", lines=True)
    assert tok.unk_token_id not in tok(train["text"].iloc[0], add_special_tokens=False)["input_ids"]
    stats = json.loads((shards_stage.run(cfg) / "stats.json").read_text())
    assert stats["train"]["tokens"] == int(train["n_tokens"].sum()) + 2 * len(train)  # same unit, no cut
    assert stats["train"]["truncated"] == 0
