"""End to end on CPU: the smoke pipeline's exported tiny model augments synthetic clients (augment=hf), the text
stage mixes the outputs into its train split, the mixed corpus goes through shards and pretraining, and the
embeddings still hold one row per client."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from llm4trx import augment, embed, export, prepare, pretrain, shards, text, tokenizer
from llm4trx.core.config import compose
from llm4trx.core.stage import read_success, stage_dir

SMALL = [
    "experiment=smoke",
    "progress=false",
    "dataset.n_clients=80",
    "dataset.max_events=40",
    "trainer.max_duration=4ba",
    "trainer.eval_interval=4ba",
    "trainer.save_interval=4ba",
    "trainer.eval_first=false",
    "trainer.cpu_threads=1",
    "tokenizer.vocab_size=512",
]


@pytest.mark.slow
def test_exported_model_augments_and_the_mixed_corpus_pretrains(tmp_path):
    out = tmp_path / "outputs"
    base = compose([*SMALL, f"paths.output_root={out}"])
    for stage in (prepare, text, tokenizer, shards, pretrain, export):
        stage.run(base)
    generator = stage_dir(base, "export")

    mixed = compose(
        [
            *SMALL,
            f"paths.output_root={out}",
            "experiment_name=smoke_mixed",
            "augment=hf",
            "augment.cpu_threads=1",
            f"augment.generator={generator}",
            "augment.clients.n=6",
            "augment.sampling.max_tokens=24",
            "augment.use=[html_little,json_large]",
            "augment.drop_empty=false",
            # the smoke model's domain tokenizer spends ~270 of its 256 tokens on the English prompt
            "augment.system=null",
            "augment.user_template='{transactions} {format}'",
            "augment.mix.sources=[hf]",
            "augment.mix.fraction=0.5",
        ]
    )
    prepare.run(mixed)
    augment.run(mixed)
    generated = [json.loads(line) for line in (stage_dir(mixed, "augment") / "hf.jsonl").read_text().splitlines()]
    assert len(generated) == 6 * 2

    text.run(mixed)
    splits = pd.read_parquet(stage_dir(mixed, "prepare") / "splits.parquet").set_index("client_id")["split"]
    train = pd.read_json(stage_dir(mixed, "text") / "train.jsonl", lines=True, dtype={"client_id": str})
    added = train[train["source"] != "base"]
    assert len(added) == 3 * 2 and set(splits[added["client_id"]]) == {"train"}
    assert set(added["text"]) <= {g["text"] for g in generated}
    for split in ("val", "test"):
        other = pd.read_json(stage_dir(mixed, "text") / f"{split}.jsonl", lines=True, dtype={"client_id": str})
        assert not set(other["client_id"]) & set(added["client_id"]) and "source" not in other
    stats = json.loads((stage_dir(mixed, "text") / "stats.json").read_text())["augmented"]
    assert stats["clients_mixed"] == 3 and stats["texts_added"] == 6

    for stage in (tokenizer, shards, pretrain, export, embed):
        stage.run(mixed)
    assert read_success(stage_dir(mixed, "shards"))["counts"]["train"]["samples"] == len(train)
    assert read_success(stage_dir(mixed, "pretrain"))["counts"]["steps"] == 4
    # embeddings: one row per client (its own text), however many augmented texts it has in train.jsonl
    emb = pd.read_parquet(stage_dir(mixed, "embed") / "embeddings.parquet")
    assert sorted(emb[mixed.dataset.id_column]) == sorted(splits.index)
