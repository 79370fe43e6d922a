"""What llm4trx adds to llm-foundry, registered through its registries (no fork, no copied code).

- `llm4trx_metrics_jsonl` (loggers): checkpoints/metrics.jsonl, one line per logged loss
  {"step", "split": "train"|"eval", "loss"}; the report draws loss curves from it.
- `llm4trx_hf_causal_lm` (models): llm-foundry's `hf_causal_lm` plus `flops_per_batch`, which llm-foundry's
  HF wrapper lacks, so that Composer's SpeedMonitor reports FLOP/s and, on GPU, MFU for Llama/Qwen too; and an
  optional contrastive term (`contrastive`, trainer.contrastive: loss = NTP + weight * InfoNCE over views of
  the same client, lm/contrastive.py), logged as loss/train/ntp and loss/train/contrastive.
- `llm4trx_text` (dataloaders): llm-foundry's `text` loader (StreamingTextDataset over our MDS shards, its text
  collator), built under a machine-wide file lock (see `build_text_dataloader_locked`), optionally in
  length-bucketed batches (`bucket_window`, lm/length_buckets.py), counting real tokens: Composer's token
  count (timestamp, tokens/s) is the clients' tokens, padding apart; optionally packed (`packing`,
  lm/packing.py: several clients per row, each attending only to itself).
- `llm4trx_placeholder` (dataloaders): one sample, for export's Trainer that never trains.
- `llm4trx_padding` (callbacks): the padded share of the positions of the batches this process trained.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import tempfile

import torch
from composer.core import Callback, State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist
from llmfoundry import registry
from llmfoundry.models.hf import ComposerHFCausalLM

TRAIN_LOSS_KEY = "loss/train/total"
EVAL_LOSS_KEY = "metrics/eval/LanguageCrossEntropy"
# The parts of a loss dict (HFCausalLMWithFlops.loss with the contrastive term), as Composer names them.
LOSS_PART_KEYS = {"ntp": "loss/train/ntp", "contrastive": "loss/train/contrastive"}
IGNORE_INDEX = -100


def keep_steps_up_to(path: Path, step: int) -> None:
    """Drop the lines a killed run logged after the checkpoint it resumes from (they are logged again)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def append_loss(path: Path, step: int, split: str, loss: float, **parts: float) -> None:
    with open(path, "a") as f:
        row = {"step": int(step), "split": split, "loss": float(loss), **{k: float(v) for k, v in parts.items()}}
        f.write(json.dumps(row) + "\n")


class MetricsJsonlLogger(LoggerDestination):
    """Train loss of every optimizer step and eval loss of every evaluation, appended to a JSONL file.

    `step` counts optimizer steps done: the loss of the first batch is step 1 (Composer logs it at batch 0,
    before the step is counted); an evaluation after k batches is step k. With the contrastive term, a train
    line's `loss` is the total trained on and `ntp` / `contrastive` are its two parts.
    """

    def __init__(self, path: str):
        self.path = Path(path)

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keep_steps_up_to(self.path, int(state.timestamp.batch))

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        if dist.get_global_rank() != 0 or step is None:
            return
        if TRAIN_LOSS_KEY in metrics:
            parts = {name: metrics[key] for name, key in LOSS_PART_KEYS.items() if key in metrics}
            append_loss(self.path, step + 1, "train", metrics[TRAIN_LOSS_KEY], **parts)
        if EVAL_LOSS_KEY in metrics:
            append_loss(self.path, step, "eval", metrics[EVAL_LOSS_KEY])


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters taking part in matrix multiplies: all but the input-embedding table (a lookup)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return total if tied else total - embedding.numel()


def flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N (forward + backward matmuls) + 12·L·d·T (attention scores and values)."""
    return 6 * n_params + 12 * n_layers * d_model * seq_len


def row_lengths(batch: Mapping) -> torch.Tensor:
    """Real (non-padding) tokens per row: the collator sets padded labels to -100."""
    if "labels" in batch:
        return (batch["labels"] != IGNORE_INDEX).sum(dim=1)
    if "attention_mask" in batch:
        return batch["attention_mask"].sum(dim=1)
    ids = batch["input_ids"]
    return torch.full((ids.shape[0],), ids.shape[1])


class HFCausalLMWithFlops(ComposerHFCausalLM):
    """llm-foundry's `hf_causal_lm` that also reports its training FLOPs per batch (for MFU).

    `contrastive` (a dict of lm/contrastive.ContrastiveSettings' fields; None or weight 0: off, the plain
    next-token loss): in training, `forward` also runs `views` random contiguous token crops of every row through
    the same backbone, pools them as `embed` pools, and `loss` returns {"total": ntp + weight * infonce, "ntp",
    "contrastive"}. Negatives are the other rows of the same microbatch on the same rank. Evaluation is NTP only.
    `flops_per_batch` counts the next-token pass only (the crops' extra pass is not in FLOP/s or MFU).
    """

    def __init__(self, *args: Any, contrastive: Optional[Mapping[str, Any]] = None, **kwargs: Any):
        from llm4trx.lm.contrastive import settings_from

        super().__init__(*args, **kwargs)
        # Counted once before FSDP shards the parameters (afterwards numel() is per shard).
        config = self.model.config
        self._flop_shape = (matmul_params(self.model), config.num_hidden_layers, config.hidden_size)
        self.contrastive = settings_from(contrastive)

    def forward(self, batch):
        outputs = super().forward(batch)
        if self.contrastive is None or not self.training:
            return outputs
        from llm4trx.lm.contrastive import view_loss

        # Inside forward, so the extra pass runs within the DDP/FSDP-wrapped module like the main one.
        outputs["contrastive_loss"] = view_loss(self.model, batch["input_ids"], row_lengths(batch), self.contrastive)
        return outputs

    def loss(self, outputs, batch):
        ntp = super().loss(outputs, batch)
        if self.contrastive is None or "contrastive_loss" not in outputs:
            return ntp
        part = outputs["contrastive_loss"]
        return {"total": ntp + self.contrastive.weight * part, "ntp": ntp, "contrastive": part}

    def flops_per_batch(self, batch: Mapping) -> int:
        n_params, n_layers, d_model = self._flop_shape
        # Packed rows (lm/packing.py): each client attends within itself, so count per client.
        lengths = (
            [n for row in batch["doc_lengths"] for n in row] if "doc_lengths" in batch else row_lengths(batch).tolist()
        )
        return int(sum(n * flops_per_token(n_params, n_layers, d_model, n) for n in lengths))


# mosaicml-streaming registers each dataset's shared memory under the first free prefix number: it looks for
# one, then creates it, so two jobs building datasets at the same instant on one machine can pick the same
# number and one dies with `FileExistsError: '/000127_locals'` (seen with seeds run side by side).
STREAMING_SHM_LOCK = Path(tempfile.gettempdir()) / "llm4trx-streaming-shm.lock"


class RealTokensCollator:
    """llm-foundry's text collator plus the per-row token counts Composer reads (llm-foundry's own wrapper
    counts a row's padded width): `total_tokens` is each row's real length, `loss_generating_tokens` the
    row's next-token targets (labels past the first position that are not -100), as llm-foundry counts them."""

    def __init__(self, base):
        self.base = base

    def __call__(self, examples: list[torch.Tensor]) -> dict[str, Any]:
        batch = self.base(examples)
        batch["total_tokens"] = [int(len(example)) for example in examples]
        batch["loss_generating_tokens"] = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
        return batch


def build_text_dataloader(
    tokenizer,
    device_batch_size,
    dataset: dict[str, Any],
    drop_last: bool,
    num_workers: int,
    pin_memory: bool = True,
    prefetch_factor: Optional[int] = 2,
    persistent_workers: bool = True,
    timeout: int = 0,
    bucket_window: int = 0,
    packing: Optional[Mapping[str, Any]] = None,
):
    """llm-foundry's `text` loader (its dataset, collator and data spec) with our dataset class and counts:
    `bucket_window` > 0 yields length-bucketed batches sorted within windows of that many batches; `packing`
    ({"width", "mask"}) packs each batch's clients into rows of at most `width` tokens (lm/packing.py)."""
    import transformers
    from llmfoundry.data.text_data import StreamingTextDataset
    from llmfoundry.data.utils import get_data_spec
    from llmfoundry.utils.registry_utils import construct_from_registry
    from torch.utils.data import DataLoader

    from llm4trx.lm.length_buckets import BucketedLoader, BucketedTextDataset
    from llm4trx.lm.packing import PackedCollator, packed_data_spec

    dataset = dict(dataset)
    dataset["replication"], batch_size = construct_from_registry(
        name="dataset_replication_validator",
        registry=registry.dataset_replication_validators,
        partial_function=False,
        kwargs={"dataset_cfg": dataset, "tokenizer": tokenizer, "device_batch_size": device_batch_size},
    )
    if bucket_window:
        text_dataset = BucketedTextDataset(
            tokenizer=tokenizer, batch_size=batch_size, bucket_window=bucket_window, **dataset
        )
    else:
        text_dataset = StreamingTextDataset(tokenizer=tokenizer, batch_size=batch_size, **dataset)
    collate = RealTokensCollator(transformers.DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False))
    if packing:
        collate = PackedCollator(collate, packing["width"], tokenizer.pad_token_id, packing["mask"])
    loader = (BucketedLoader if bucket_window else DataLoader)(
        text_dataset,
        collate_fn=collate,
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor,
        persistent_workers=persistent_workers,
        timeout=timeout,
    )
    return packed_data_spec(loader) if packing else get_data_spec(loader, dataset)


@contextlib.contextmanager
def streaming_registration():
    """Hold STREAMING_SHM_LOCK while streaming datasets are built (their constructor registers the shared
    memory), so jobs on one machine register one at a time: wrap every StreamingDataset construction in it.

    Only the local leader (LOCAL_RANK 0) takes the lock: it alone creates the shared memory, and the other
    ranks of its job meet it at streaming's barrier inside the construction (a lock per rank would deadlock).
    """
    from filelock import FileLock

    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        yield
        return
    with FileLock(str(STREAMING_SHM_LOCK)):
        yield


def build_text_dataloader_locked(**kwargs: Any):
    """`build_text_dataloader`, built within `streaming_registration()`."""
    with streaming_registration():
        return build_text_dataloader(**kwargs)


def build_placeholder_dataloader(tokenizer, device_batch_size, **_: Any):
    """A one-sample loader for a Trainer that never trains (export: llm-foundry's `only_hf_checkpoint`, which
    builds a train loader it never iterates): no shards read, no streaming shared memory or machine-wide lock."""
    import transformers
    from llmfoundry.data.utils import get_data_spec
    from torch.utils.data import DataLoader

    sample = [torch.tensor([tokenizer.eos_token_id], dtype=torch.int64)]
    collate = RealTokensCollator(transformers.DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False))
    return get_data_spec(DataLoader(sample, batch_size=1, collate_fn=collate), {})


class PaddingMonitor(Callback):
    """Real tokens and positions (rows x padded width) of the train microbatches this process ran forward, over
    all ranks; `padded_share` is set at fit end (None before). A resumed run counts the batches it trained itself.
    Counted per microbatch, as computed: packed microbatches are cut to their own longest row (lm/packing.py)."""

    def __init__(self):
        self.real, self.positions = 0, 0
        self.padded_share: Optional[float] = None

    def before_forward(self, state: State, logger: Logger) -> None:
        batch = state.batch
        self.positions += int(batch["input_ids"].numel())
        self.real += int(sum(batch["total_tokens"]))

    def fit_end(self, state: State, logger: Logger) -> None:
        # On the run's device: NCCL reduces CUDA tensors only.
        counts = state.device.tensor_to_device(torch.tensor([self.real, self.positions], dtype=torch.float64))
        dist.all_reduce(counts)
        real, positions = counts.tolist()
        self.padded_share = 1 - real / positions if positions else None
        if self.padded_share is not None:
            logger.log_metrics({"data/padded_share": self.padded_share})


def host_cpu_model() -> str:
    """The host CPU's name as the kernel reports it (the "model name" of /proc/cpuinfo; on our machines the same
    string as py-cpuinfo's `brand_raw`), else platform.processor(), else "CPU" (Composer's own fallback)."""
    import platform

    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or "CPU"


def register() -> None:
    """Idempotent: registering the same object again is a no-op for llm-foundry's registries.

    Also replaces Composer's CPU-name probe: every Trainer records the host CPU's name (hyperparameters,
    checkpoint metadata) through py-cpuinfo, which starts a Python interpreter, lscpu and dmesg to find it:
    ~1.2 s and ~1.2 CPU-s per Trainer (pretraining, export, each rank; over a hundred Trainers in the tests).
    `host_cpu_model` reads the same name from /proc/cpuinfo in microseconds."""
    from composer.utils import collect_env

    collect_env.get_cpu_model = host_cpu_model
    registry.loggers.register("llm4trx_metrics_jsonl", func=MetricsJsonlLogger)
    registry.models.register("llm4trx_hf_causal_lm", func=HFCausalLMWithFlops)
    registry.dataloaders.register("llm4trx_text", func=build_text_dataloader_locked)
    registry.dataloaders.register("llm4trx_placeholder", func=build_placeholder_dataloader)
    registry.callbacks.register("llm4trx_padding", func=PaddingMonitor)
