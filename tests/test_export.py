"""Stage `export`: Composer checkpoint -> hf/ through llm-foundry's hf_checkpointer, verified by logits."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fixtures_lm import build_lm_inputs, smoke_cfg

from llm4trx.core.errors import DataError, StageInputMissing
from llm4trx.export import max_logit_difference, run, val_batch
from llm4trx.pretrain import load_tokenizer
from llm4trx.core.stage import read_success, stage_dir, write_success


@pytest.fixture(scope="module")
def exported(smoke_pretrained):
    cfg, _ = smoke_pretrained
    return cfg, run(cfg)


@pytest.mark.slow
def test_export_writes_an_hf_dir_that_plain_transformers_loads(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, hf_dir = exported
    assert hf_dir == stage_dir(cfg, "export")
    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not [p for p in hf_dir.iterdir() if p.is_dir()]  # llm-foundry's work folders are gone
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config  # HF-native: no remote code
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    assert tokenizer.pad_token is not None and tokenizer.eos_token is not None
    assert model.config.vocab_size == len(tokenizer)
    counts = read_success(hf_dir)["counts"]
    assert counts["backend"] == "foundry" and counts["checkpoint"] == "ep2-ba60-rank0.pt"
    assert counts["max_abs_logit_diff"] <= counts["verify_atol"] == 1e-4
    # hf/llm4trx.json: what the model was trained on, checked by runs that apply it (embed.model=<this hf/>).
    record = json.loads((hf_dir / "llm4trx.json").read_text())
    assert record["text"]["format"] == cfg.text.format and record["tokenizer"]["config"]["kind"] == cfg.tokenizer.kind
    assert record["run"] == {"experiment": cfg.experiment_name, "dataset": cfg.dataset.name, "seed": cfg.seed}
    from llm4trx.data.model_record import _file_digest

    assert record["tokenizer"]["tokenizer_json"] == _file_digest(stage_dir(cfg, "tokenizer") / "tokenizer.json")


@pytest.mark.slow
def test_exported_logits_equal_the_composer_checkpoint_weights(exported):
    """Independently of the stage's own check: load the Composer checkpoint's weights by hand and compare."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg, hf_dir = exported
    checkpoints = stage_dir(cfg, "pretrain")
    state = torch.load(checkpoints / "latest-rank0.pt", map_location="cpu", weights_only=False)
    weights = {k.removeprefix("model."): v for k, v in state["state"]["model"].items()}
    trained = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(checkpoints / "init_config")))
    trained.load_state_dict(weights)
    batch = val_batch(cfg, pad_id=load_tokenizer(stage_dir(cfg, "tokenizer")).pad_token_id, n=4)
    assert max_logit_difference(trained, hf_dir, batch, trust_remote_code=False) <= 1e-4
    # The comparison can fail: a perturbed model is told apart.
    with torch.no_grad():
        trained.lm_head.weight.add_(0.01)
    assert max_logit_difference(trained, hf_dir, batch, trust_remote_code=False) > 1e-3


def test_export_needs_a_finished_pretrain_stage(tmp_path):
    cfg = smoke_cfg(tmp_path)
    with pytest.raises(StageInputMissing, match="pretrain"):
        run(cfg)


def test_checkpoint_folder_without_a_checkpoint_is_an_error(tmp_path):
    cfg = smoke_cfg(tmp_path)
    build_lm_inputs(cfg, n_train=16, n_val=4)
    folder = stage_dir(cfg, "pretrain")
    folder.mkdir(parents=True)
    write_success(folder, "h", 0.0, {"backend": "foundry"})
    with pytest.raises(DataError, match="no Composer checkpoint"):
        run(cfg)
    assert not stage_dir(cfg, "export").exists()
    shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_success(folder, "h", 0.0, {"backend": "hf"})
    with pytest.raises(DataError, match="no Hugging Face checkpoint"):
        run(cfg)
    assert not stage_dir(cfg, "export").exists()


@pytest.mark.slow
def test_mpt_trains_and_exports_through_the_same_path(tmp_path):
    """model=mpt_125m shrunk to CPU size: llm-foundry's native MPT, exported with its own (remote) code."""
    from llm4trx.pretrain import run as pretrain

    cfg = smoke_cfg(
        tmp_path,
        "model=mpt_125m",
        "trainer.packing=false",  # native MPT reads no 4D mask (the smoke preset packs)
        "model.foundry.d_model=64",
        "model.foundry.n_heads=4",
        "model.foundry.n_layers=2",
        "trainer.max_duration=10ba",
        "trainer.eval_interval=5ba",
        "trainer.save_interval=5ba",
    )
    build_lm_inputs(cfg, n_train=48, n_val=8)
    assert read_success(pretrain(cfg))["counts"]["steps"] == 10
    hf_dir = run(cfg)
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "mpt" and (hf_dir / "modeling_mpt.py").is_file()
    assert read_success(hf_dir)["counts"]["max_abs_logit_diff"] <= 1e-4
