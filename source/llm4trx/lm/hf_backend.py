"""trainer.backend=hf: the same model on the same data with transformers' Trainer (under accelerate).

Equal terms with the llm-foundry backend: the model is built from the same config.json (or local checkpoint),
samples come from the same MDS split through llm-foundry's StreamingTextDataset, batches are collated by the
same DataCollatorForLanguageModeling (padded to the longest client in the batch), and the optimizer,
schedule, clipping, batch sizes, eval/save intervals map one to one from trainer/. Output: HF checkpoints
(checkpoint-N/, final/) and the same checkpoints/metrics.jsonl.

Like lm/foundry_config.py (whose model source and init config it shares), this module takes the composed
`DictConfig`: it is the other backend's config translator, mapping trainer/ and model/ key by key onto
transformers' TrainingArguments and model loading.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from llm4trx.core.errors import ConfigError
from llm4trx.core.schema import TRACKERS
from llm4trx.lm.foundry_config import INIT_CONFIG_DIR, METRICS_FILE, model_source, plain, write_init_config


def batches(value: Any, key: str) -> int:
    """A Composer duration in batches ("60ba" or 60) as a number of optimizer steps."""
    match = re.fullmatch(r"\s*(\d+)\s*(ba)?\s*", str(value))
    if not match:
        raise ConfigError(f"trainer.{key}={value!r}: the hf backend needs a duration in batches, e.g. 200ba")
    return int(match.group(1))


def build_model(cfg: DictConfig, tok: dict[str, Any], folder: Path):
    import torch.distributed as tdist
    from transformers import AutoConfig, AutoModelForCausalLM

    source = model_source(cfg, folder)
    if not cfg.model.pretrained:
        if int(os.environ.get("RANK", "0")) == 0:
            write_init_config(cfg, tok, folder / INIT_CONFIG_DIR)
        if tdist.is_available() and tdist.is_initialized():  # TrainingArguments has set up the process group
            tdist.barrier()
    attn = cfg.model.attn_implementation or "eager"
    if cfg.model.pretrained:
        return AutoModelForCausalLM.from_pretrained(str(source), attn_implementation=attn, trust_remote_code=False)
    config = AutoConfig.from_pretrained(str(source), use_cache=False)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn)


def training_arguments(cfg: DictConfig, folder: Path, world_size: int):
    from transformers import TrainingArguments

    t = cfg.trainer
    if t.optimizer.name not in ("decoupled_adamw", "adamw"):
        raise ConfigError(f"trainer.optimizer.name={t.optimizer.name}: the hf backend maps only (decoupled_)adamw")
    if t.scheduler.name != "cosine_with_warmup":
        raise ConfigError(f"trainer.scheduler.name={t.scheduler.name}: the hf backend maps only cosine_with_warmup")
    device_batch = int(t.global_train_batch_size) // world_size
    micro = t.device_train_microbatch_size
    micro = device_batch if micro == "auto" else int(micro)
    fsdp = plain(t.fsdp)
    fsdp_kwargs = {}
    if fsdp:
        strategy = {"FULL_SHARD": "full_shard", "HYBRID_SHARD": "hybrid_shard", "SHARD_GRAD_OP": "shard_grad_op"}[
            fsdp.get("sharding_strategy", "FULL_SHARD")
        ]
        fsdp_kwargs = {
            "fsdp": f"{strategy} auto_wrap",
            "fsdp_config": {
                "activation_checkpointing": bool(fsdp.get("activation_checkpointing")),
                "use_orig_params": bool(fsdp.get("use_orig_params", True)),
            },
        }
    return TrainingArguments(
        output_dir=str(folder),
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        max_steps=batches(t.max_duration, "max_duration"),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=max(1, device_batch // micro),
        per_device_eval_batch_size=int(t.device_eval_batch_size),
        learning_rate=float(t.optimizer.lr),
        adam_beta1=float(t.optimizer.betas[0]),
        adam_beta2=float(t.optimizer.betas[1]),
        adam_epsilon=float(t.optimizer.eps),
        weight_decay=float(t.optimizer.weight_decay),
        optim="adamw_torch",
        # Composer's cosine_with_warmup: linear warmup, then cosine down to alpha_f * lr at max_duration.
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": float(t.scheduler.alpha_f)},
        warmup_steps=batches(t.scheduler.t_warmup, "scheduler.t_warmup"),
        max_grad_norm=float(t.grad_clip_norm or 0.0),
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=batches(t.eval_interval, "eval_interval"),
        eval_on_start=bool(t.eval_first),
        save_strategy="steps",
        save_steps=batches(t.save_interval, "save_interval"),
        save_total_limit=int(t.save_num_checkpoints_to_keep) if int(t.save_num_checkpoints_to_keep) > 0 else None,
        save_safetensors=True,
        bf16=t.precision == "amp_bf16",
        fp16=t.precision == "amp_fp16",
        use_cpu=t.device == "cpu",
        dataloader_num_workers=int(t.num_workers),
        dataloader_pin_memory=t.device == "gpu",
        remove_unused_columns=False,
        # Each rank streams its own partition of the MDS split (StreamingDataset shards by rank itself).
        accelerator_config={"dispatch_batches": False, "split_batches": False},
        report_to=[name for name in (t.loggers or []) if name in TRACKERS] or "none",  # same names in transformers
        disable_tqdm=not cfg.progress,
        ddp_timeout=int(t.dist_timeout),
        **fsdp_kwargs,
    )


def metrics_callback(path: Path):
    from transformers import TrainerCallback

    from llm4trx.lm.foundry_plugins import append_loss, keep_steps_up_to

    class MetricsJsonl(TrainerCallback):
        """The same checkpoints/metrics.jsonl as the llm-foundry backend writes."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                keep_steps_up_to(path, state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                append_loss(path, state.global_step, "train", logs["loss"])
            if "eval_loss" in logs:
                append_loss(path, state.global_step, "eval", logs["eval_loss"])

    return MetricsJsonl()


def build_trainer(cfg: DictConfig, inputs: dict[str, Any], folder: Path, callbacks=()):
    from llmfoundry.data.text_data import StreamingTextDataset
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer

    from llm4trx.lm.foundry_plugins import streaming_registration

    # Set by torchrun / accelerate launch for every rank.
    args = training_arguments(cfg, folder, int(os.environ.get("WORLD_SIZE", "1")))
    tokenizer = AutoTokenizer.from_pretrained(str(inputs["tokenizer_dir"]), padding_side="right")
    mds = inputs["mds_dir"]

    world_size = int(os.environ.get("WORLD_SIZE", "1"))

    def split(name: str, train: bool, batch_size: int):
        # accelerate shards an IterableDataset across ranks itself (IterableDatasetShard); StreamingDataset
        # would shard it by rank too, and each rank would see only 1/world_size of its share. With
        # replication=world_size streaming gives every rank the same stream and accelerate splits it once.
        with streaming_registration():  # another job may be registering its datasets' shared memory
            return StreamingTextDataset(
                tokenizer=tokenizer,
                max_seq_len=int(cfg.max_seq_len),
                local=str(mds / name),
                shuffle=train,
                shuffle_seed=int(cfg.seed),
                batch_size=batch_size,
                replication=world_size if world_size > 1 else None,
            )

    return Trainer(
        model=build_model(cfg, inputs["tok"], folder),
        args=args,
        train_dataset=split("train", True, args.per_device_train_batch_size),
        eval_dataset=split("val", False, args.per_device_eval_batch_size),
        # llm-foundry's text collator (mlm=False): pads to the longest sequence in the batch, pads -> -100.
        data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False),
        callbacks=[metrics_callback(folder / METRICS_FILE), *callbacks],
    )


def train_hf(cfg: DictConfig, inputs: dict[str, Any], folder: Path, callbacks=()) -> dict[str, Any]:
    from transformers.trainer_utils import get_last_checkpoint

    trainer = build_trainer(cfg, inputs, folder, callbacks)
    resume = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(folder / "final"))
    steps = int(trainer.state.global_step)
    return {
        "backend": "hf",
        "steps": steps,
        "samples_seen": steps * int(cfg.trainer.global_train_batch_size),
        "resumed_from_step": int(resume.rsplit("-", 1)[1]) if resume else 0,
    }
