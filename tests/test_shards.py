"""Stage `shards`: MDS read back by llm-foundry with the very tokens written; reruns; truncation keeps the end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from canonical_data import canonical_run
from transformers import AutoTokenizer

from llm4trx import shards as shards_stage
from llm4trx import text as text_stage
from llm4trx import tokenizer as tokenizer_stage
from llm4trx.core.config import compose
from llm4trx.core.errors import DataError, StageInputMissing
from llm4trx.core.stage import read_success, stage_dir
from llm4trx.lm.foundry_plugins import streaming_registration

MAX_SEQ_LEN = 96


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory):
    cfg = canonical_run(
        tmp_path_factory.mktemp("mds"),
        "rosbank",
        [
            "text=compact",
            "tokenizer.vocab_size=400",
            f"max_seq_len={MAX_SEQ_LEN}",
            "text.max_tokens=null",
        ],  # untruncated texts, so shards must cut some
        n_clients=30,
        max_events=40,
    )
    text_stage.run(cfg)
    tokenizer_stage.run(cfg)
    return cfg, shards_stage.run(cfg)


def expected_samples(cfg, split):
    tok = AutoTokenizer.from_pretrained(str(stage_dir(cfg, "tokenizer")))
    frame = pd.read_json(stage_dir(cfg, "text") / f"{split}.jsonl", lines=True, dtype={"client_id": str})
    samples = []
    for text in frame["text"]:
        ids = tok(text, add_special_tokens=False)["input_ids"][-(MAX_SEQ_LEN - 2) :]  # keeps the END
        samples.append([tok.bos_token_id, *ids, tok.eos_token_id])
    return frame["client_id"].tolist(), samples, tok


def test_llmfoundry_reads_back_the_tokens_written(shard_run):
    from llmfoundry.data.text_data import StreamingTextDataset
    from streaming import StreamingDataset
    from fixtures_lm import clean_stale_streaming_memory

    cfg, out = shard_run
    clean_stale_streaming_memory()
    for split in ("train", "val"):
        ids, samples, tok = expected_samples(cfg, split)
        with streaming_registration():  # other xdist workers' stages may be registering theirs
            dataset = StreamingTextDataset(
                tokenizer=tok,
                max_seq_len=MAX_SEQ_LEN,
                token_encoding_type="int32",
                local=str(out / split),
                shuffle=False,
                batch_size=1,
            )
            raw = StreamingDataset(local=str(out / split), shuffle=False, batch_size=1)
        assert len(dataset) == len(samples) > 0
        assert [dataset[i].tolist() for i in range(len(dataset))] == samples
        assert [raw[i]["client_id"] for i in range(len(raw))] == ids
        assert raw[0]["tokens"].dtype == np.int32


def test_truncation_counted_and_test_clients_absent(shard_run):
    cfg, out = shard_run
    stats = json.loads((out / "stats.json").read_text())
    for split in ("train", "val"):
        _, samples, tok = expected_samples(cfg, split)
        long = sum(
            len(tok(t, add_special_tokens=False)["input_ids"]) > MAX_SEQ_LEN - 2
            for t in pd.read_json(stage_dir(cfg, "text") / f"{split}.jsonl", lines=True)["text"]
        )
        assert stats[split]["truncated"] == long and stats[split]["samples"] == len(samples)
    assert stats["train"]["truncated"] > 0
    test_ids = set(
        pd.read_json(stage_dir(cfg, "text") / "test.jsonl", lines=True, dtype={"client_id": str})["client_id"]
    )
    assert test_ids
    from streaming import StreamingDataset

    for split in ("train", "val"):
        with streaming_registration():
            raw = StreamingDataset(local=str(out / split), shuffle=False, batch_size=1)
        assert not {raw[i]["client_id"] for i in range(len(raw))} & test_ids


def test_rerun_is_skipped_and_force_rewrites_in_place(shard_run):
    cfg, out = shard_run
    before = read_success(out)
    assert shards_stage.run(cfg) == out and read_success(out) == before
    cfg.force = True
    try:
        assert shards_stage.run(cfg) == out  # an existing folder is replaced atomically, no error
    finally:
        cfg.force = False
    assert read_success(out)["counts"] == before["counts"]
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".mds")) == []


def test_missing_inputs_and_bad_jsonl(tmp_path, shard_run):
    with pytest.raises(StageInputMissing, match="text"):
        shards_stage.run(compose([f"paths.output_root={tmp_path}"]))
    cfg, _ = shard_run
    broken = compose([f"paths.output_root={tmp_path}/b", "max_seq_len=64"])
    for stage in ("text", "tokenizer"):
        src, dst = stage_dir(cfg, stage), stage_dir(broken, stage)
        dst.mkdir(parents=True)
        for f in src.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
    with open(stage_dir(broken, "text") / "train.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"train.jsonl, row \d+"):
        shards_stage.run(broken)
    assert not stage_dir(broken, "shards").exists()


@pytest.mark.parametrize("dataset,fmt", [("synthetic", "flat"), ("age_pred_sample", "compact")])
def test_real_prepare_to_shards(tmp_path, dataset, fmt):
    """The real chain on real schemas: raw CSV -> prepare -> text -> tokenizer -> shards, read back by llm-foundry."""
    from llmfoundry.data.text_data import StreamingTextDataset

    from llm4trx import prepare

    overrides = [
        f"paths.output_root={tmp_path}",
        f"dataset={dataset}",
        f"text={fmt}",
        "progress=false",
        "text.max_tokens=300",
        "tokenizer.vocab_size=400",
        "max_seq_len=128",
    ]
    if dataset == "synthetic":
        overrides += ["dataset.n_clients=40", "dataset.max_events=40"]
    cfg = compose(overrides)
    for stage in (prepare, text_stage, tokenizer_stage, shards_stage):
        stage.run(cfg)
    texts = pd.read_json(stage_dir(cfg, "text") / "train.jsonl", lines=True, dtype={"client_id": str})
    assert (texts["n_tokens"] <= 300).all() and (texts["n_events_kept"] <= texts["n_events"]).all()
    tok = AutoTokenizer.from_pretrained(str(stage_dir(cfg, "tokenizer")))
    with streaming_registration():
        dataset_ = StreamingTextDataset(
            tokenizer=tok,
            max_seq_len=128,
            token_encoding_type="int32",
            local=str(stage_dir(cfg, "shards") / "train"),
            shuffle=False,
            batch_size=1,
        )
    first = tok(texts["text"].iloc[0], add_special_tokens=False)["input_ids"][-126:]
    assert dataset_[0].tolist() == [tok.bos_token_id, *first, tok.eos_token_id]
    assert len(dataset_) == len(texts)
