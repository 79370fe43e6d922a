"""Every model/ x trainer/ config composes into an llm-foundry train config that llm-foundry accepts.

No GPU and no weights: the train config goes through llm-foundry's own TrainConfig construction and checks
(`validate_train_config`), and each model's Hugging Face / MPT config is built from config.json values alone
(the published configs of the continued-pretraining checkpoints are written to local dirs by the test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_lm import CPU_TEST, PUBLISHED_CONFIGS, build_lm_inputs, write_model_config

from llm4trx.core.config import CONF_DIR, compose
from llm4trx.lm.foundry_config import hf_config_dict, tokenizer_info, train_config, validate_train_config
from llm4trx.pretrain import check_model, load_tokenizer
from llm4trx.core.stage import stage_dir

MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (Path(CONF_DIR) / "trainer").glob("*.yaml"))


def test_the_expected_configs_exist():
    assert MODELS == ["llama_3_2_1b", "llama_3_2_3b", "mpt_125m", "qwen2_5_1_5b", "tiny"]
    assert TRAINERS == ["cpu", "fsdp_8xa100", "gpu1", "multinode"]


@pytest.fixture(scope="module")
def lm_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    cfg = compose([f"paths.output_root={root / 'outputs'}"])
    build_lm_inputs(cfg, n_train=16, n_val=4)
    local = {name: write_model_config(root / name, values) for name, values in PUBLISHED_CONFIGS.items()}
    tok = tokenizer_info(load_tokenizer(stage_dir(cfg, "tokenizer")))
    return root, local, tok


def composed(root: Path, local: dict, model: str, trainer: str):
    overrides = [f"paths.output_root={root / 'outputs'}", f"model={model}", f"trainer={trainer}", *CPU_TEST]
    if model in local:
        overrides.append(f"model.pretrained_model_name_or_path={local[model]}")
    if model == "mpt_125m":  # native MPT reads no 4D mask: one client per row (the smoke preset packs)
        overrides.append("trainer.packing=false")
    return compose(overrides)


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_and_trainer_gives_a_valid_llm_foundry_config(lm_inputs, model, trainer):
    root, local, tok = lm_inputs
    cfg = composed(root, local, model, trainer)
    folder = stage_dir(cfg, "pretrain")
    raw = train_config(cfg, tok, stage_dir(cfg, "tokenizer"), stage_dir(cfg, "shards"), folder)
    checked = validate_train_config(raw)  # llm-foundry's TrainConfig + batch-size transform + validate_config

    assert checked.max_seq_len == cfg.max_seq_len
    assert checked.save_folder == str(folder) and checked.autoresume
    assert checked.train_loader["dataset"]["local"].endswith("mds/train")
    assert checked.eval_loader["dataset"]["local"].endswith("mds/val")
    assert checked.train_loader["name"] == "llm4trx_text" and "eos_token_id" not in checked.train_loader["dataset"]
    assert {"lr_monitor", "speed_monitor"} <= set(checked.callbacks)
    assert "llm4trx_metrics_jsonl" in checked.loggers
    assert checked.device_train_batch_size == cfg.trainer.global_train_batch_size  # one rank here

    if trainer == "cpu":
        assert checked.precision == "fp32" and checked.fsdp_config is None
        assert checked.train_loader["prefetch_factor"] is None  # num_workers 0
    else:
        assert checked.precision == "amp_bf16"
    if trainer in ("fsdp_8xa100", "multinode"):
        fsdp = checked.fsdp_config
        assert fsdp["sharding_strategy"] == ("FULL_SHARD" if trainer == "fsdp_8xa100" else "HYBRID_SHARD")
        assert fsdp["state_dict_type"] == "full"  # export reads one consolidated checkpoint
        assert fsdp["activation_checkpointing"] is False
        assert checked.model["init_device"] == ("mixed" if cfg.model.pretrained else "meta")
    else:
        assert checked.model["init_device"] == "cpu"

    if model == "mpt_125m":
        assert checked.model["name"] == "mpt_causal_lm"
        assert checked.model["vocab_size"] == tok["vocab_size"]
    else:
        assert checked.model["name"] == "llm4trx_hf_causal_lm"
        assert checked.model["trust_remote_code"] is False
        assert checked.model["pretrained"] == (model != "tiny")


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_builds_without_weights(lm_inputs, model):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    root, local, tok = lm_inputs
    cfg = composed(root, local, model, "cpu")
    check_model(cfg, tok)  # max_seq_len and vocabulary fit the model
    if model == "mpt_125m":
        from llmfoundry.models.mpt import MPTConfig

        section = train_config(
            cfg, tok, stage_dir(cfg, "tokenizer"), stage_dir(cfg, "shards"), stage_dir(cfg, "pretrain")
        )["model"]
        config = MPTConfig(**{k: v for k, v in section.items() if k != "name"})
        assert (config.d_model, config.n_layers) == (768, 12)
    elif model == "tiny":
        config = AutoConfig.for_model(**hf_config_dict(cfg, tok))
        assert config.vocab_size == tok["vocab_size"] and config.max_position_embeddings == cfg.max_seq_len
    else:
        config = AutoConfig.from_pretrained(str(local[model]))
    with torch.device("meta"):  # shapes only: no memory, no weights
        net = AutoModelForCausalLM.from_config(config) if model != "mpt_125m" else None
    if net is not None:
        n_params = sum(p.numel() for p in net.parameters())
        expected = {
            "tiny": (5e4, 5e5),
            "llama_3_2_1b": (1.1e9, 1.4e9),
            "llama_3_2_3b": (3.0e9, 3.4e9),
            "qwen2_5_1_5b": (1.4e9, 1.7e9),
        }[model]
        assert expected[0] < n_params < expected[1]


REAL_DATA_PRESETS = ["llama_8xa100", "llama_rosbank", "llama_age_pred", "llama_gender"]


@pytest.mark.parametrize("experiment", REAL_DATA_PRESETS)
def test_real_data_presets_give_a_valid_llm_foundry_config(lm_inputs, experiment):
    """The 8xA100 presets (Llama-3.2-1B from a local checkpoint, 8192 tokens, FSDP) pass llm-foundry's checks."""
    root, local, tok = lm_inputs
    fixture = compose([f"paths.output_root={root / 'outputs'}"])  # where lm_inputs wrote tokenizer/ and mds/
    cfg = compose(
        [
            f"paths.output_root={root / 'outputs'}",
            f"experiment={experiment}",
            *CPU_TEST,
            f"model.pretrained_model_name_or_path={local['llama_3_2_1b']}",
        ]
    )
    assert cfg.tokenizer.kind == "pretrained" and cfg.tokenizer.path == str(local["llama_3_2_1b"])
    assert cfg.text.count_tokenizer == cfg.tokenizer.path  # budgets counted in the model's own tokens
    if experiment != "llama_8xa100":
        assert cfg.dataset.name == experiment.removeprefix("llama_") and cfg.dataset.download.files
    check_model(cfg, tok)
    raw = train_config(
        cfg, tok, stage_dir(fixture, "tokenizer"), stage_dir(fixture, "shards"), stage_dir(cfg, "pretrain")
    )
    checked = validate_train_config(raw)
    assert checked.max_seq_len == 8192
    assert checked.precision == "amp_bf16"
    assert checked.fsdp_config["sharding_strategy"] == "FULL_SHARD"
    assert checked.model["pretrained"] is True and checked.model["init_device"] == "mixed"
    assert checked.model["pretrained_model_name_or_path"] == str(local["llama_3_2_1b"])
    # 8 ranks: the global batch splits into whole microbatches on every GPU.
    per_rank = cfg.trainer.global_train_batch_size // 8
    assert (
        per_rank * 8 == cfg.trainer.global_train_batch_size and per_rank % cfg.trainer.device_train_microbatch_size == 0
    )
