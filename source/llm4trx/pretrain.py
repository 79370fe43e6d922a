"""Stage `pretrain`: next-token pretraining on clients' token sequences (mds/ + tokenizer/ -> checkpoints/).

`python -m llm4trx.pretrain experiment=smoke` builds an llm-foundry train config from the Hydra config
(llm4trx.lm.foundry_config) and runs llm-foundry's `train` in-process (trainer.backend=foundry), or the same
model on the same MDS data with transformers' Trainer (trainer.backend=hf, llm4trx.lm.hf_backend).

checkpoints/ is the save folder itself, not built in a temporary folder like other stages: a killed run must
find its checkpoints again. Rerunning the same command resumes from the last checkpoint (Composer autoresume
/ HF resume_from_checkpoint); a finished run (`_SUCCESS.json` with the same config hash) is skipped; a run
of a different config (or force=true) clears the folder and starts from step 0.
Multi-GPU: `composer -n 8 -m llm4trx.pretrain trainer=fsdp_8xa100 ...` (one process per GPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from llm4trx.core import registry
from llm4trx.core.cli import figure, stage_main
from llm4trx.data.curves import last_losses
from llm4trx.core.errors import ConfigError, DataError
from llm4trx.lm.tokenizers import load_tokenizer
from llm4trx.data.splits import PRETRAIN_SPLITS
from llm4trx.core.stage import SUCCESS_FILE, is_complete, require, stage_dir, stage_hash, write_success

log = logging.getLogger(__name__)

STAGE = "pretrain"

# What core/stage_runner.py imports before forking this stage, so the stages after it (export) inherit it.
PRELOAD = ("llmfoundry.command_utils", "llm4trx.lm.foundry_config", "llm4trx.lm.foundry_plugins")
RUN_FILE = registry.file("pretrain", "run")  # config hash of the run that owns the checkpoints in this folder


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def end_with_launcher() -> None:
    """A rank started by Composer's launcher gets SIGTERM when the launcher dies.

    SIGTERM to the launcher is forwarded by the launcher itself (30 s, then SIGKILL), but a launcher killed with
    SIGKILL (kill -9, the OOM killer) cannot clean up: nothing signals its ranks, which would train on as
    orphans. With the parent-death signal they stop the way a SIGTERM stops any stage (checkpoints kept,
    exit 143), and a rerun resumes.
    Linux only (prctl); a no-op elsewhere.
    """
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:  # only under Composer's launcher (torchrun forwards signals itself; in-process Composer sets LOCAL_RANK)
        if b"composer" not in Path(f"/proc/{parent}/cmdline").read_bytes():
            return
    except OSError:
        return
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the launcher died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


# ---------------------------------------------------------------- checks (before anything is written)


def count_samples(split_dir: Path) -> int:
    index = split_dir / "index.json"
    if not index.is_file():
        raise DataError(index, "missing: no MDS shards for this split (run `python -m llm4trx.shards`)")
    shards = json.loads(index.read_text()).get("shards", [])
    for shard in shards:
        columns = dict(zip(shard.get("column_names", []), shard.get("column_encodings", [])))
        if not str(columns.get("tokens", "")).startswith("ndarray:"):
            raise DataError(
                split_dir / shard["raw_data"]["basename"],
                "shard has no ndarray column with the pre-tokenized sample",
                column="tokens",
            )
    n = sum(int(shard["samples"]) for shard in shards)
    if n == 0:
        raise DataError(index, "the MDS split is empty (0 samples)")
    return n


def check_runtime(cfg: DictConfig) -> None:
    import torch

    t = cfg.trainer
    if t.fsdp is not None and (t.device != "gpu" or not torch.cuda.is_available()):
        raise ConfigError(
            f"trainer.fsdp is set with trainer.device={t.device} (CUDA available: "
            f"{torch.cuda.is_available()}): FSDP runs on GPUs only; use trainer=cpu on a CPU "
            "machine, trainer=fsdp_8xa100 on a GPU node"
        )
    if t.device == "gpu" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=gpu but CUDA is not available; use trainer=cpu")
    if t.device == "cpu" and t.precision != "fp32":
        raise ConfigError(f"trainer.precision={t.precision} on CPU: Composer trains fp32 on CPU")


def model_positions(config: dict[str, Any]) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if config.get(key):
            return int(config[key])
    return None


def check_model(cfg: DictConfig, tok: dict[str, Any]) -> None:
    """The model can take max_seq_len tokens and the tokenizer's ids (read from config.json; no weights)."""
    if not cfg.model.pretrained:
        return
    try:
        path = Path(cfg.model.pretrained_model_name_or_path)
    except MissingMandatoryValue as err:
        raise ConfigError(
            f"model={cfg.model.name} continues pretraining from a local Hugging Face checkpoint: "
            "set model.pretrained_model_name_or_path=/path/to/dir"
        ) from err
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"model.pretrained_model_name_or_path={path}: no config.json there (a local Hugging "
            "Face checkpoint directory is needed; nothing is downloaded)"
        )
    config = json.loads(config_file.read_text())
    config = config.get("text_config", config)
    positions = model_positions(config)
    if positions is not None and int(cfg.max_seq_len) > positions:
        raise ConfigError(
            f"max_seq_len={cfg.max_seq_len} is larger than model {cfg.model.name} supports "
            f"({positions} positions in {config_file}); lower max_seq_len"
        )
    if config.get("vocab_size") and tok["vocab_size"] > int(config["vocab_size"]):
        raise ConfigError(
            f"the tokenizer has {tok['vocab_size']} tokens but {config_file} has vocab_size "
            f"{config['vocab_size']}: continue pretraining with the model's own tokenizer "
            "(tokenizer=pretrained)"
        )


def check_inputs(cfg: DictConfig) -> dict[str, Any]:
    """Everything that can be wrong with inputs or config, raised before any output is written."""
    from llm4trx.lm.foundry_config import contrastive_section, is_hf_model, packing, tokenizer_info

    tokenizer_dir, mds_dir = require(cfg, "tokenizer"), require(cfg, "shards")
    check_runtime(cfg)
    tok = tokenizer_info(load_tokenizer(tokenizer_dir, need=("eos_token", "pad_token")))
    counts = {split: count_samples(mds_dir / split) for split in PRETRAIN_SPLITS}
    if counts["train"] < int(cfg.trainer.global_train_batch_size):
        raise ConfigError(
            f"mds/train has {counts['train']} samples, fewer than one batch "
            f"(trainer.global_train_batch_size={cfg.trainer.global_train_batch_size})"
        )
    check_model(cfg, tok)
    if cfg.trainer.backend == "hf" and not is_hf_model(cfg):
        raise ConfigError(f"trainer.backend=hf needs a Hugging Face model (model={cfg.model.name} is native MPT)")
    contrastive = contrastive_section(cfg)  # checks trainer.contrastive (one line per bad key)
    if contrastive is not None and (cfg.trainer.backend != "foundry" or not is_hf_model(cfg)):
        raise ConfigError(
            f"trainer.contrastive.weight={contrastive['weight']}: the contrastive term runs on the foundry backend "
            f"with a Hugging Face model (here trainer.backend={cfg.trainer.backend}, model={cfg.model.name})"
        )
    packing(cfg)  # checks the model and its attention for packed rows (one line)
    return {"tokenizer_dir": tokenizer_dir, "mds_dir": mds_dir, "tok": tok, "samples": counts}


# ---------------------------------------------------------------- the stage folder


def claim_folder(folder: Path, want: str, force: bool) -> None:
    """Keep checkpoints of an unfinished run of this config (to resume); clear those of any other run."""
    if global_rank() != 0:
        return
    previous = None
    if (folder / RUN_FILE).is_file():
        previous = json.loads((folder / RUN_FILE).read_text()).get("config_hash")
    if folder.exists() and (force or previous != want):
        log.warning(
            "pretrain: %s holds a run of another config%s; starting from step 0",
            folder,
            " (force=true)" if force else "",
        )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps({"config_hash": want}) + "\n")
    (folder / SUCCESS_FILE).unlink(missing_ok=True)


# ---------------------------------------------------------------- backends


def latest_composer_step(folder: Path) -> int:
    """Batch of the checkpoint Composer's autoresume will load (0: none, training starts at step 0)."""
    latest = folder / "latest-rank0.pt"
    match = re.search(r"-ba(\d+)-", os.path.basename(os.readlink(latest))) if latest.is_symlink() else None
    return int(match.group(1)) if match and latest.exists() else 0


def remove_unlinked_checkpoints(folder: Path, resumed_from: int, rank: int) -> list[str]:
    """Remove this rank's checkpoints past the one autoresume loads, and return their names.

    A run killed between writing a checkpoint and linking it as latest-rank0.pt (the parent-death SIGTERM of a
    killed launcher, kill -9 during a save) leaves that file behind, and Composer then refuses to start beside
    it ("may conflict with a future checkpoint"): the rerun that should resume fails. The folder is claimed by
    this run's config hash, so the file is this run's own; the resumed run writes that step again. Each rank
    removes only its own files (Composer's check is per rank too), before the ranks' first barrier.
    """
    removed = []
    pattern = re.compile(rf"^ep\d+-ba(\d+)-rank{rank}\.pt$")
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = pattern.match(path.name)
        if match and int(match.group(1)) > resumed_from and not path.is_symlink():
            path.unlink()
            removed.append(path.name)
    return removed


def several_nodes() -> bool:
    """A job of more than one node (the launcher's WORLD_SIZE beyond this node's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


@contextlib.contextmanager
def node_local_cwd():
    """On a job of several nodes, run in a folder of this node only (restored after).

    Composer and llm-foundry synchronise the ranks of a node through signal files in the current directory
    whose names are broadcast from global rank 0, so every node uses the same name: when the nodes share the
    working directory (the repository on a cluster's shared filesystem, or two launchers on one machine) the
    local rank 0 of each node writes and removes the same file, and one of them fails (FileNotFoundError).
    """
    if not several_nodes():
        yield
        return
    here = os.getcwd()
    env = os.environ
    node_dir = Path(tempfile.gettempdir()) / (
        f"llm4trx-{env.get('MASTER_ADDR', 'local')}-{env.get('MASTER_PORT', '0')}-node{env.get('NODE_RANK', '0')}"
    )
    node_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(node_dir)
    try:
        yield
    finally:
        os.chdir(here)


def train_foundry(cfg: DictConfig, inputs: dict[str, Any], folder: Path) -> dict[str, Any]:
    from llmfoundry.command_utils import train

    from llm4trx.lm import foundry_config, foundry_plugins

    foundry_plugins.register()
    resumed_from = latest_composer_step(folder)
    if resumed_from:
        log.info("pretrain: resuming from step %d (%s)", resumed_from, folder / "latest-rank0.pt")
    for name in remove_unlinked_checkpoints(folder, resumed_from, global_rank()):
        log.warning("pretrain: removed %s, a checkpoint a killed run wrote but never linked as latest", name)
    # Rank 0 writes the from-scratch config.json before entering llm-foundry's train; the other ranks read it
    # only after train's first distributed barrier, which rank 0 reaches after writing.
    if not cfg.model.pretrained and cfg.model.hf_config is not None and global_rank() == 0:
        foundry_config.write_init_config(cfg, inputs["tok"], folder / foundry_config.INIT_CONFIG_DIR)
    # Absolute paths: on several nodes training runs in a node-local working directory (node_local_cwd).
    train_cfg = foundry_config.train_config(
        cfg, inputs["tok"], Path(inputs["tokenizer_dir"]).resolve(), Path(inputs["mds_dir"]).resolve(), folder.resolve()
    )
    if several_nodes():
        # Composer's autoresume syncs each node through a signal file in the save folder, named alike on every
        # node: on a shared save folder both nodes' local rank 0 write and remove the same file and one fails
        # (FileNotFoundError, seen with two nodes). The same checkpoint given as load_path is read through a
        # node-local temporary folder instead.
        train_cfg["autoresume"] = False
        if resumed_from:
            train_cfg["load_path"] = str((folder / "latest-rank0.pt").resolve())
    with node_local_cwd():
        trainer = train(OmegaConf.create(train_cfg))
    timestamp = trainer.state.timestamp
    padding = next(c for c in trainer.state.callbacks if isinstance(c, foundry_plugins.PaddingMonitor))
    # tokens_seen: the clients' real tokens (padding apart; lm/foundry_plugins.RealTokensCollator), over the
    # whole run including before a resume; padded_share: of the positions this process trained.
    counts = {
        "backend": "foundry",
        "steps": int(timestamp.batch),
        "samples_seen": int(timestamp.sample),
        "tokens_seen": int(timestamp.token),
        "padded_share": padding.padded_share,
        # Composer's training wall-clock (checkpointed, so it spans a resume; evaluation apart)
        "train_seconds": round(timestamp.total_wct.total_seconds(), 3),
        "real_tokens_per_s": round(int(timestamp.token) / max(timestamp.total_wct.total_seconds(), 1e-9), 1),
        "length_bucketing": foundry_config.bucket_window(cfg) > 0,
        "packing": foundry_config.packing(cfg) is not None,
        "resumed_from_step": resumed_from,
    }
    trainer.close()
    return counts


def run(cfg: DictConfig) -> Path:
    end_with_launcher()
    folder = stage_dir(cfg, STAGE)
    want = stage_hash(cfg, STAGE)
    if not cfg.get("force", False) and is_complete(folder, want):
        log.info("pretrain: up to date (%s), skipped", folder)
        return folder
    inputs = check_inputs(cfg)
    claim_folder(folder, want, bool(cfg.get("force", False)))
    started = time.time()
    if cfg.trainer.get("cpu_threads"):
        import torch

        # On a CPU shared with other jobs, fewer threads than cores avoids oversubscription (5x slower seen).
        torch.set_num_threads(int(cfg.trainer.cpu_threads))
        os.environ["OMP_NUM_THREADS"] = str(cfg.trainer.cpu_threads)  # else accelerate resets it (hf backend)
    if cfg.trainer.backend == "hf":
        from llm4trx.lm.hf_backend import train_hf

        counts = train_hf(cfg, inputs, folder)
    else:
        counts = train_foundry(cfg, inputs, folder)
    if global_rank() == 0:
        write_success(
            folder,
            want,
            started,
            {
                **counts,
                "train_samples": inputs["samples"]["train"],
                "val_samples": inputs["samples"]["val"],
                "vocab_size": inputs["tok"]["vocab_size"],
            },
            cfg,
            STAGE,
        )
    share = counts.get("padded_share")
    log.info(
        "pretrain: %s steps, %s real tokens seen (padding apart%s) in %.1f s -> %s",
        counts["steps"],
        counts.get("tokens_seen"),
        "" if share is None else f"; {share:.1%} of positions were padding",
        time.time() - started,
        folder,
    )
    return folder


def summary_line(c: dict, seconds: float, folder: Path) -> str:
    parts = [f"{c.get('steps')} steps"] + [f"{s} loss {v:.4f}" for s, v in last_losses(folder).items()]
    if c.get("tokens_seen"):
        parts.append(f"{figure(c['tokens_seen'] / seconds)} tokens/s")
    if c.get("resumed_from_step"):
        parts.append(f"resumed from step {c['resumed_from_step']}")
    return ", ".join(parts)


main = stage_main(run, summary_line)

if __name__ == "__main__":
    main()
