"""The llm-foundry train config (the dict `llmfoundry.command_utils.train` takes) built from our Hydra config.

Pure functions of the composed config and the input folders: tests validate the result for every
model/ x trainer/ pair without a GPU and without weights (`validate_train_config`).

Unlike the other library modules (which take plain values or the typed sections of `core.sections`), this one
takes the composed `DictConfig` itself: it is a config translator, whose job is to read the model/, trainer/ and
root sections and write them out as llm-foundry's config, key by key.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llm4trx.core.errors import ConfigError
from llm4trx.data.curves import METRICS_FILE  # checkpoints/metrics.jsonl: {"step", "split", "loss"} per line

HF_MODEL = "llm4trx_hf_causal_lm"
INIT_CONFIG_DIR = "init_config"  # under checkpoints/: config.json of a model trained from scratch
# Experiment trackers llm-foundry builds by name (llmfoundry/loggers); anything else is a config error.


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def tokenizer_info(tokenizer) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def is_hf_model(cfg: DictConfig) -> bool:
    """Llama/Qwen through llm-foundry's HF wrapper (from a config.json or a local checkpoint); else native MPT."""
    return bool(cfg.model.pretrained) or cfg.model.hf_config is not None


def init_device(cfg: DictConfig) -> str:
    # FSDP: build big models without memory (meta) and let FSDP materialise the shards; a pretrained model is
    # loaded by rank 0 only and broadcast (llm-foundry's `mixed`). Without FSDP: plain CPU init.
    if cfg.trainer.fsdp is None:
        return "cpu"
    return "mixed" if cfg.model.pretrained else "meta"


def hf_config_dict(cfg: DictConfig, tok: dict[str, Any]) -> dict[str, Any]:
    """config.json of a from-scratch HF model: the model's `hf_config` plus sizes from tokenizer and root."""
    return {
        **plain(cfg.model.hf_config),
        "vocab_size": tok["vocab_size"],
        "bos_token_id": tok["bos_token_id"],
        "eos_token_id": tok["eos_token_id"],
        "pad_token_id": tok["pad_token_id"],
        "max_position_embeddings": int(cfg.max_seq_len),
    }


def write_init_config(cfg: DictConfig, tok: dict[str, Any], folder: Path) -> Path:
    """Write config.json for a from-scratch HF model into `folder` (atomically: every rank may write it)."""
    from transformers import AutoConfig

    values = hf_config_dict(cfg, tok)
    config = AutoConfig.for_model(**values)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".json.tmp")
    os.close(fd)
    config.to_json_file(tmp)
    os.replace(tmp, folder / "config.json")
    return folder


def model_source(cfg: DictConfig, checkpoints: Path) -> Path:
    """Directory holding the HF config (and weights, when pretrained) that llm-foundry builds the model from."""
    if cfg.model.pretrained:
        return Path(cfg.model.pretrained_model_name_or_path)
    return checkpoints / INIT_CONFIG_DIR


def contrastive_section(cfg: DictConfig) -> dict[str, Any] | None:
    """`trainer.contrastive` plus embed's pooling (the views are pooled as embed pools); None when off (weight 0),
    so that the default run's train config, and so its training, stay what they were without the term."""
    from llm4trx.lm.contrastive import settings_from

    values = plain(cfg.trainer.get("contrastive"))
    if not values:
        return None
    # One vector per view, not embed.segments parts: crops start at random offsets, so their parts do not align.
    values = {**values, "pooling": cfg.embed.pooling, "layer_slice": list(cfg.embed.layer_slice)}
    if settings_from(values) is None:
        return None
    return values


def model_section(cfg: DictConfig, tok: dict[str, Any], checkpoints: Path) -> dict[str, Any]:
    extra = plain(cfg.model.foundry) or {}
    contrastive = contrastive_section(cfg)
    if contrastive is not None and not is_hf_model(cfg):
        raise ConfigError(
            f"trainer.contrastive.weight={contrastive['weight']}: the contrastive term needs a Hugging Face model "
            f"(model={cfg.model.name} is native MPT)"
        )
    if is_hf_model(cfg):
        return {
            "name": HF_MODEL,
            "pretrained": bool(cfg.model.pretrained),
            "pretrained_model_name_or_path": str(model_source(cfg, checkpoints)),
            "attn_implementation": cfg.model.attn_implementation,
            # Llama and Qwen2 are native in transformers: never execute code shipped inside a checkpoint.
            "trust_remote_code": False,
            "init_device": init_device(cfg),
            **({"contrastive": contrastive} if contrastive is not None else {}),
            **extra,
        }
    if "name" not in extra:
        raise ConfigError(f"model={cfg.model.name}: set model.hf_config, model.pretrained, or model.foundry.name")
    return {
        **extra,
        "vocab_size": tok["vocab_size"],
        "max_seq_len": int(cfg.max_seq_len),
        "init_device": init_device(cfg),
    }


def loader_section(cfg: DictConfig, split_dir: Path, train: bool) -> dict[str, Any]:
    """llm-foundry's `text` loader over one of our MDS splits (pre-tokenized `tokens`, one client per sample).

    No `eos_token_id`/packing here, so llm-foundry's text collator (transformers
    DataCollatorForLanguageModeling, mlm=False) pads each batch only to its longest client sequence and masks
    the pads out of the loss (labels -100); right padding cannot leak into a causal model's real positions.
    llm-foundry's own packing (`sequence_id` masking) exists only for its MPT, where a Llama/Qwen row would attend
    across clients; `trainer.packing` packs a batch's clients with a block-diagonal 4D mask instead
    (lm/packing.py: the same clients per step, the same targets). With `trainer.length_bucketing`, batches hold
    clients of similar length (sorted within windows of `trainer.bucket_window` batches), so little is padded.
    """
    workers = int(cfg.trainer.num_workers)
    packed = packing(cfg)
    # Optional `+trainer.data_remote=s3://bucket/prefix` (or gs://, oci://, hf://...): the shards are streamed
    # from <remote>/<split> by mosaicml-streaming and cached in the local split folder (README, "Spark engine").
    remote = cfg.trainer.get("data_remote")
    return {
        "name": "llm4trx_text",  # llm-foundry's `text` loader, built under a lock (lm/foundry_plugins.py)
        "dataset": {
            "local": str(split_dir),
            "remote": f"{str(remote).rstrip('/')}/{split_dir.name}" if remote else None,
            "split": None,
            "shuffle": train,
            "shuffle_seed": int(cfg.seed),
            "max_seq_len": int(cfg.max_seq_len),
        },
        "drop_last": train,
        "bucket_window": bucket_window(cfg),
        **({"packing": packed} if packed else {}),
        "num_workers": workers,
        # torch refuses a prefetch_factor without worker processes.
        "prefetch_factor": 2 if workers > 0 else None,
        "persistent_workers": workers > 0,
        "pin_memory": cfg.trainer.device == "gpu",
    }


def packing(cfg: DictConfig) -> dict[str, Any] | None:
    """trainer.packing: the loader's {"width", "mask"} (lm/packing.py), or None (one client per row). Packed rows
    need a Hugging Face model on the foundry backend whose attention reads a 4D mask (sdpa or eager)."""
    from llm4trx.lm.packing import MASK_KINDS

    if not cfg.trainer.get("packing"):
        return None
    if cfg.trainer.get("backend", "foundry") != "foundry":
        raise ConfigError(
            f"trainer.packing=true packs the foundry backend's batches (here trainer.backend={cfg.trainer.backend}); "
            "set trainer.packing=false"
        )
    if not is_hf_model(cfg):
        raise ConfigError(f"trainer.packing=true needs a Hugging Face model (model={cfg.model.name} is native MPT)")
    attn = cfg.model.get("attn_implementation") or "sdpa"  # transformers' default where torch has sdpa
    if attn not in MASK_KINDS:
        raise ConfigError(
            f"trainer.packing=true: model.attn_implementation={attn} reads no 4D attention mask; "
            f"use one of {sorted(MASK_KINDS)} or trainer.packing=false"
        )
    if contrastive_section(cfg) is not None:
        raise ConfigError(
            "trainer.packing=true with trainer.contrastive.weight > 0: the contrastive term crops one client per row; "
            "set trainer.packing=false"
        )
    return {"width": int(cfg.max_seq_len), "mask": MASK_KINDS[attn]}


def bucket_window(cfg: DictConfig) -> int:
    """Batches sorted by length together (0: no bucketing, batches of random clients)."""
    t = cfg.trainer
    if not t.get("length_bucketing"):
        return 0
    window = t.get("bucket_window")  # an integer >= 1: core/schema.py
    return window


def loggers_section(cfg: DictConfig, checkpoints: Path) -> dict[str, Any]:
    loggers: dict[str, Any] = {"llm4trx_metrics_jsonl": {"path": str(checkpoints / METRICS_FILE)}}
    settings = plain(cfg.trainer.logger_settings) or {}
    for name in cfg.trainer.loggers or []:  # each one of TRACKERS: core/schema.py
        loggers[name] = dict(settings.get(name) or {})
    return loggers


def run_name(cfg: DictConfig) -> str:
    # Composer's autoresume needs a run name; it is the same for every rerun of the same run directory.
    return f"{cfg.experiment_name}-{cfg.dataset.name}-seed{cfg.seed}"


def train_config(
    cfg: DictConfig, tok: dict[str, Any], tokenizer_dir: Path, mds_dir: Path, checkpoints: Path
) -> dict[str, Any]:
    """The full llm-foundry train config for the run of `cfg` (saves into `checkpoints`, autoresumes)."""
    t = cfg.trainer
    algorithms = {}
    if t.grad_clip_norm:
        algorithms["gradient_clipping"] = {"clipping_type": "norm", "clipping_threshold": float(t.grad_clip_norm)}
    return {
        "run_name": run_name(cfg),
        "seed": int(cfg.seed),
        "max_seq_len": int(cfg.max_seq_len),
        "model": model_section(cfg, tok, checkpoints),
        # Right padding: the text collator sends no attention mask, so pads must come after the real tokens.
        "tokenizer": {
            "name": str(tokenizer_dir),
            "kwargs": {"model_max_length": int(cfg.max_seq_len), "padding_side": "right"},
        },
        "train_loader": loader_section(cfg, mds_dir / "train", train=True),
        "eval_loader": loader_section(cfg, mds_dir / "val", train=False),
        "optimizer": plain(t.optimizer),
        "scheduler": plain(t.scheduler),
        "algorithms": algorithms,
        "precision": t.precision,
        "fsdp_config": plain(t.fsdp),
        "global_train_batch_size": int(t.global_train_batch_size),
        "device_train_microbatch_size": t.device_train_microbatch_size,
        "device_eval_batch_size": int(t.device_eval_batch_size),
        "max_duration": t.max_duration,
        "eval_interval": t.eval_interval,
        "eval_first": bool(t.eval_first),
        "eval_subset_num_batches": int(t.eval_subset_num_batches),
        "save_folder": str(checkpoints),
        "save_interval": t.save_interval,
        "save_num_checkpoints_to_keep": int(t.save_num_checkpoints_to_keep),
        "save_overwrite": False,
        "autoresume": True,
        "callbacks": {
            "lr_monitor": {},
            # tokens/s, and MFU where Composer knows the GPU's peak FLOP/s (A100, H100, ...).
            "speed_monitor": {"window_size": 10},
            "llm4trx_padding": {},  # padded share of the trained positions (lm/foundry_plugins.py)
        },
        "loggers": loggers_section(cfg, checkpoints),
        "progress_bar": bool(cfg.progress),
        "log_to_console": True,
        "console_log_interval": t.console_log_interval,
        # None: llm-foundry leaves logging alone (its basicConfig(force=True) would drop Hydra's log file).
        "python_log_level": None,
        "log_config": False,
        "dist_timeout": float(t.dist_timeout),
    }


def validate_train_config(train_cfg: dict[str, Any]):
    """Check a train config as llm-foundry's `train` does before building anything (TrainConfig + transforms).

    Returns the TrainConfig dataclass. Needs no GPU, no data and no weights.
    """
    from llmfoundry.command_utils.train import validate_config
    from llmfoundry.utils.config_utils import TRAIN_CONFIG_KEYS, TrainConfig, make_dataclass_and_log_config

    _, dataclass_cfg = make_dataclass_and_log_config(
        OmegaConf.create(json.loads(json.dumps(train_cfg))),
        TrainConfig,
        TRAIN_CONFIG_KEYS,
        transforms="all",
    )
    validate_config(dataclass_cfg)
    return dataclass_cfg
