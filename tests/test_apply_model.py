"""A trained model applied to other data (`embed.model=DIR`) and incremental embedding.

Run A (the embed fixtures: the product's data/, a text/ in the contract's format and a tiny random Llama as
hf/ with the record the export stage writes) provides the model; run B is another experiment on new clients
(another generator seed) that embeds with A's hf/ without a tokenizer, shards, pretrain or export of its own.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from embed_fixtures import write_all, write_data, write_text
from llm4trx import embed, validate
from llm4trx.core import registry
from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import RunSpec
from llm4trx.core.stage import read_success, stage_dir, stage_hash, write_success
from llm4trx.data.model_record import RECORD, make_record, write_record
from pipeline_helpers import ROOT, child_env

SMALL = ["progress=false", "embed.batch_size=8", "dataset.n_clients=120", "dataset.max_events=40", "validate.n_jobs=1"]


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """Run A: data/, text/ and hf/ (with hf/llm4trx.json as export writes it)."""
    root = tmp_path_factory.mktemp("model_run") / "outputs"
    cfg = compose([f"paths.output_root={root}", *SMALL])
    write_all(cfg)
    hf = stage_dir(cfg, "export")
    tok_dir = hf  # the fixture's tokenizer files sit in hf/ (export copies the run's tokenizer there too)
    write_record(hf, make_record(RunSpec.from_config(cfg), tok_dir))
    return cfg, hf


def applying(tmp_path, hf, *overrides):
    """Run B: another experiment on new clients of the same schema, with A's model."""
    cfg = compose(
        [
            f"paths.output_root={tmp_path / 'outputs'}",
            *SMALL,
            "experiment_name=next_month",
            "dataset.seed=1",
            f"embed.model={hf}",
            *overrides,
        ]
    )
    write_data(cfg)
    write_text(cfg)
    return cfg


def test_applied_model_skips_the_lm_stages_and_validates_as_its_own_row(model_run, tmp_path):
    cfg_a, hf = model_run
    cfg = applying(tmp_path, hf)
    assert registry.pipeline(cfg) == ["prepare", "text", "embed", "coles", "baselines", "validate"]
    assert registry.inputs_of(cfg, "embed") == ["text"]
    # Fine-tuning from this run's own export still needs the LM stages.
    with_finetune = compose([f"embed.model={hf}", "finetune=default"])
    assert registry.pipeline(with_finetune)[:7] == [
        "prepare",
        "text",
        "tokenizer",
        "shards",
        "pretrain",
        "export",
        "embed",
    ]
    folder = embed.run(cfg)
    counts = read_success(folder)["counts"]
    assert counts["model"] == str(hf) and counts["row_name"] == "llm:smoke-synthetic-seed_42"
    frame = pd.read_parquet(folder / "embeddings.parquet")
    new = embed.read_texts(stage_dir(cfg, "text"))
    assert sorted(frame[cfg.dataset.id_column]) == sorted(new["client_id"])
    old = embed.read_texts(stage_dir(cfg_a, "text"))
    assert set(new["text"]).isdisjoint(old["text"])  # new clients' histories
    # random_dim null: the floor as wide as the applied model's vectors, drawn by validate (no baselines stage)
    sets = {"feature_sets": ["llm", "random"], "concatenations": ["llm+random"], "random_dim": None}
    vcfg = OmegaConf.merge(cfg, {"validate": sets})
    results = json.loads((validate.run(vcfg) / "results.json").read_text())
    assert list(results["feature_sets"]) == [
        "llm:smoke-synthetic-seed_42",
        "random",
        "llm:smoke-synthetic-seed_42+random",
    ]
    named = OmegaConf.merge(vcfg, {"embed": {"name": "a_model"}})
    embed.run(named)
    results = json.loads((validate.run(named) / "results.json").read_text())
    assert "llm:a_model" in results["feature_sets"]


def test_the_applied_model_is_part_of_embeds_hash(model_run, tmp_path):
    _, hf = model_run
    cfg = applying(tmp_path, hf)
    before = stage_hash(cfg, "embed")
    other = tmp_path / "other_hf"
    shutil.copytree(hf, other)
    assert stage_hash(OmegaConf.merge(cfg, {"embed": {"model": str(other)}}), "embed") != before
    # The same path holding a retrained model (its export's hash changes) rebuilds embed too.
    done = json.loads((hf / "_SUCCESS.json").read_text())
    try:
        write_success(hf, "retrained", 0.0, done.get("counts"))
        assert stage_hash(cfg, "embed") != before
    finally:
        (hf / "_SUCCESS.json").write_text(json.dumps(done))
    assert stage_hash(cfg, "embed") == before


def test_texts_rendered_otherwise_than_the_model_learned_are_one_line(model_run, tmp_path):
    _, hf = model_run
    cfg = applying(tmp_path, hf, "text=compact")
    with pytest.raises(
        ConfigError,
        match=r"embed.model=.*hf was trained on texts of experiment 'smoke'.*"
        r"text.format='compact' \(model: 'fields'\)",
    ):
        embed.run(cfg)
    assert not stage_dir(cfg, "embed").exists()
    # Through the entry point: one line on stderr, exit status 2, nothing written.
    args = [
        f"paths.output_root={tmp_path / 'outputs'}",
        *SMALL,
        "experiment_name=next_month",
        "dataset.seed=1",
        f"embed.model={hf}",
        "text=compact",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "llm4trx.embed", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: embed.model=") and "(model: 'fields')" in errors[0]
    assert not stage_dir(cfg, "embed").exists() and not list(stage_dir(cfg, "embed").parent.glob(".embeddings*"))


def test_a_plain_hf_checkpoint_is_applied_with_a_warning(model_run, tmp_path, caplog):
    _, hf = model_run
    plain = tmp_path / "Plain-LM"
    shutil.copytree(hf, plain)
    (plain / RECORD).unlink()
    (plain / "_SUCCESS.json").unlink()  # a checkpoint no stage of ours wrote
    cfg = applying(tmp_path, plain)
    with caplog.at_level(logging.WARNING, logger="llm4trx"):
        folder = embed.run(cfg)
    assert any("cannot be checked" in r.getMessage() for r in caplog.records)
    assert read_success(folder)["counts"]["row_name"] == "llm:Plain-LM"
    bad = applying(tmp_path / "b", tmp_path / "nothing-here")
    with pytest.raises(ConfigError, match=r"embed.model=.*nothing-here' is not a Hugging Face model directory"):
        embed.run(bad)


def edit_texts(cfg, clients: list[str], version: str) -> None:
    """Change the texts of `clients` in text/ and mark text/ rebuilt (a new hash), as a new raw file would."""
    folder = stage_dir(cfg, "text")
    for split in ("train", "val", "test"):
        path = folder / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            if row["client_id"] in clients:
                row["text"] += f"\n12-31 5411 {len(version) * 7}"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_success(folder, f"edited-{version}", 0.0, {})


def test_only_clients_whose_texts_changed_are_recomputed(tmp_path):
    cfg = compose([f"paths.output_root={tmp_path / 'outputs'}", *SMALL])
    write_all(cfg)
    first = read_success(embed.run(cfg))["counts"]
    n = first["clients"]
    assert first["recomputed"] == n and first["reused"] == 0
    before = pd.read_parquet(stage_dir(cfg, "embed") / "embeddings.parquet").set_index(cfg.dataset.id_column)

    changed = sorted(before.index)[:3]
    edit_texts(cfg, changed, "v2")
    second = read_success(embed.run(cfg))["counts"]
    assert (second["recomputed"], second["reused"]) == (3, n - 3)
    after = pd.read_parquet(stage_dir(cfg, "embed") / "embeddings.parquet").set_index(cfg.dataset.id_column)
    kept = after.index.difference(changed)
    np.testing.assert_array_equal(after.loc[kept].to_numpy(), before.loc[kept].to_numpy())
    assert not np.allclose(after.loc[changed].to_numpy(), before.loc[changed].to_numpy())

    # Every row equals a full recomputation (force=true recomputes every client).
    full = read_success(embed.run(OmegaConf.merge(cfg, {"force": True})))["counts"]
    assert (full["recomputed"], full["reused"]) == (n, 0)
    fresh = pd.read_parquet(stage_dir(cfg, "embed") / "embeddings.parquet").set_index(cfg.dataset.id_column)
    np.testing.assert_allclose(fresh.to_numpy(), after.to_numpy(), atol=1e-5)

    # Other pooling settings: nothing of the previous vectors is reused.
    edit_texts(cfg, changed[:1], "v3")
    last = read_success(embed.run(OmegaConf.merge(cfg, {"embed": {"pooling": "last"}})))["counts"]
    assert (last["recomputed"], last["reused"]) == (n, 0)
