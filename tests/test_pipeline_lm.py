"""End to end on the real stages: prepare -> text -> tokenizer -> shards -> pretrain -> export (synthetic data)."""

from __future__ import annotations

import json

import pytest
from fixtures_lm import smoke_cfg

from llm4trx import export, prepare, pretrain, shards, text, tokenizer
from llm4trx.core.stage import read_success


@pytest.mark.slow
def test_smoke_pipeline_from_raw_files_to_an_exported_model(tmp_path):
    cfg = smoke_cfg(
        tmp_path / "outputs",
        "dataset.n_clients=200",
        "dataset.max_events=30",
        "tokenizer.vocab_size=500",
        "trainer.max_duration=30ba",
        "trainer.eval_interval=15ba",
        "trainer.eval_first=true",
        "trainer.save_interval=15ba",
    )
    for stage in (prepare, text, tokenizer, shards):
        stage.run(cfg)
    checkpoints = pretrain.run(cfg)
    rows = [json.loads(line) for line in (checkpoints / "metrics.jsonl").read_text().splitlines()]
    evals = {row["step"]: row["loss"] for row in rows if row["split"] == "eval"}
    assert sorted(evals) == [0, 15, 30] and evals[30] < 0.8 * evals[0]
    hf_dir = export.run(cfg)
    counts = read_success(hf_dir)["counts"]
    assert counts["max_abs_logit_diff"] <= 1e-4

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir))
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    assert model.config.vocab_size == len(tok) and model.config.max_position_embeddings == cfg.max_seq_len
