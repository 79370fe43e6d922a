"""Stage `export`: the trained checkpoint -> hf/ (config.json, model.safetensors, tokenizer files).

Composer checkpoints go through llm-foundry's own conversion: its `train` with `only_hf_checkpoint: true`
loads the checkpoint into the model the run was trained with and calls its `hf_checkpointer` callback once
(llm-foundry's conversion script is not in the wheel). The HF backend's checkpoints are already HF models and
are re-saved as safetensors. Either way the written directory is reloaded with plain transformers
(`AutoModelForCausalLM`, no trust_remote_code for Llama/Qwen) and its logits on a val batch must equal the
trained model's: max |difference| <= export.verify_atol (1e-4 in fp32 on CPU; a bfloat16 export is compared
with the trained weights rounded to bfloat16). Otherwise the stage fails and writes nothing. Beside the HF files,
hf/llm4trx.json records the text format, schema and tokenizer the model was trained on (data/model_record.py),
checked by embed when another run applies this model (embed.model=<this hf/>).
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from llm4trx.core.cli import stage_main
from llm4trx.core.errors import DataError, Llm4trxError
from llm4trx.core.sections import RunSpec
from llm4trx.data.model_record import make_record, write_record
from llm4trx.lm.tokenizers import load_tokenizer
from llm4trx.core.stage import read_success, require, run_stage

if TYPE_CHECKING:  # torch is imported where it is used: an up-to-date export skips without it (seconds)
    import torch

log = logging.getLogger(__name__)

STAGE = "export"

# What core/stage_runner.py imports before forking this stage, so that later stages inherit it.
PRELOAD = ("llmfoundry.command_utils", "llm4trx.lm.foundry_config", "llm4trx.lm.foundry_plugins")


class ExportMismatch(Llm4trxError):
    """The exported model does not reproduce the trained model's logits."""


def composer_checkpoint(folder: Path) -> Path:
    latest = folder / "latest-rank0.pt"
    if latest.exists():
        return latest.resolve()
    found = sorted(folder.glob("ep*-ba*-rank0.pt"), key=lambda p: int(re.search(r"-ba(\d+)-", p.name).group(1)))
    if not found:
        raise DataError(
            folder,
            "no Composer checkpoint (latest-rank0.pt or ep*-ba*-rank0.pt) in the pretrain "
            "folder; rerun `python -m llm4trx.pretrain` with force=true",
        )
    return found[-1]


def hf_checkpoint(folder: Path) -> Path:
    if (folder / "final" / "config.json").is_file():
        return folder / "final"
    found = sorted(folder.glob("checkpoint-*/config.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not found:
        raise DataError(
            folder,
            "no Hugging Face checkpoint (final/ or checkpoint-N/) in the pretrain folder; "
            "rerun `python -m llm4trx.pretrain` with force=true",
        )
    return found[-1].parent


def val_batch(cfg: DictConfig, pad_id: int, n: int) -> dict[str, torch.Tensor]:
    """The first `n` val clients, truncated to max_seq_len and right-padded to the longest."""
    import numpy as np
    import torch
    from streaming import StreamingDataset

    from llm4trx.lm.foundry_plugins import streaming_registration

    with streaming_registration():  # another job may be registering its datasets' shared memory
        dataset = StreamingDataset(local=str(require(cfg, "shards") / "val"), shuffle=False, batch_size=1)
    rows = [
        np.asarray(dataset[i]["tokens"][: int(cfg.max_seq_len)], dtype=np.int64)
        for i in range(min(n, dataset.num_samples))
    ]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.from_numpy(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def max_logit_difference(
    reference: torch.nn.Module, export_dir: Path, batch: dict[str, torch.Tensor], trust_remote_code: bool
) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(str(export_dir))  # the tokenizer files must load too
    if trust_remote_code:
        # transformers imports remote code as a module named after the folder; the stage's temporary folder
        # (.hf.tmp-<pid>) is no valid module name, so load MPT's code from a copy.
        copy_dir = Path(tempfile.mkdtemp(prefix="llm4trx_export_")) / "model"
        shutil.copytree(export_dir, copy_dir)
        export_dir = copy_dir
    exported = AutoModelForCausalLM.from_pretrained(
        str(export_dir), torch_dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    if trust_remote_code:
        shutil.rmtree(export_dir.parent)
    reference.eval()
    exported.eval()
    with torch.no_grad():
        want = reference(**batch).logits.float()
        got = exported(**batch).logits.float()
    if want.shape != got.shape:
        raise ExportMismatch(f"{export_dir}: logits shape {tuple(got.shape)} != trained model's {tuple(want.shape)}")
    real = batch["attention_mask"].bool()
    return float((want - got).abs()[real].max())


def rounded_like_export(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    import torch

    from llm4trx.lm.dtypes import DTYPES

    if precision == "float32":
        return model
    return copy.deepcopy(model).to(DTYPES[precision]).to(torch.float32)


def export_foundry(cfg: DictConfig, checkpoints: Path, out: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """llm-foundry's own conversion: `train(only_hf_checkpoint=True)` + its `hf_checkpointer` callback."""
    from llmfoundry.command_utils import train

    from llm4trx.lm import foundry_config, foundry_plugins

    checkpoint = composer_checkpoint(checkpoints)
    foundry_plugins.register()
    tokenizer_dir, mds_dir = require(cfg, "tokenizer"), require(cfg, "shards")
    tok = foundry_config.tokenizer_info(load_tokenizer(tokenizer_dir, need=("eos_token", "pad_token")))
    train_cfg = foundry_config.train_config(cfg, tok, tokenizer_dir, mds_dir, checkpoints)
    work = out / "_hf_checkpointer"
    train_cfg["model"].update(init_device="cpu", pretrained=False)  # every weight comes from the checkpoint
    train_cfg.update(
        load_path=str(checkpoint),
        load_weights_only=True,
        autoresume=False,
        save_folder=None,
        # llm-foundry builds a train loader even here, never iterated: a one-sample placeholder, not the shards
        train_loader={"name": "llm4trx_placeholder"},
        only_hf_checkpoint=True,
        fsdp_config=None,
        precision="fp32",
        eval_loader=None,
        loggers={},
        progress_bar=False,
        algorithms={},
        callbacks={
            "hf_checkpointer": {
                "save_folder": str(work),
                "save_interval": "1ba",
                "precision": cfg.export.precision,
                "huggingface_folder_name": "model",
            }
        },
    )
    trainer = train(OmegaConf.create(train_cfg))
    written = work / "huggingface" / "model"
    for path in written.iterdir():
        if path.is_file():  # skip `register_save/`, a copy llm-foundry makes for MLflow registration
            shutil.move(str(path), out / path.name)
    shutil.rmtree(work)
    reference = trainer.state.model.model
    trainer.close()
    return reference, {"checkpoint": checkpoint.name}


def export_hf(cfg: DictConfig, checkpoints: Path, out: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM

    from llm4trx.lm.dtypes import DTYPES

    source = hf_checkpoint(checkpoints)
    model = AutoModelForCausalLM.from_pretrained(str(source), torch_dtype=torch.float32)
    copy.deepcopy(model).to(DTYPES[cfg.export.precision]).save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(require(cfg, "tokenizer"), need=("eos_token", "pad_token")).save_pretrained(str(out))
    return model, {"checkpoint": source.name}


def build(cfg: DictConfig, out: Path) -> dict[str, Any]:
    checkpoints = require(cfg, "pretrain")
    backend = (read_success(checkpoints) or {}).get("counts", {}).get("backend", "foundry")
    if backend == "hf":
        reference, counts = export_hf(cfg, checkpoints, out)
    else:
        reference, counts = export_foundry(cfg, checkpoints, out)
    if not (out / "config.json").is_file() or not any(out.glob("*.safetensors")):
        raise ExportMismatch(f"{out}: the conversion wrote no config.json/*.safetensors")
    pad_id = load_tokenizer(require(cfg, "tokenizer"), need=("eos_token", "pad_token")).pad_token_id
    batch = val_batch(cfg, pad_id, int(cfg.export.verify_batch_size))
    diff = max_logit_difference(
        rounded_like_export(reference, cfg.export.precision),
        out,
        batch,
        trust_remote_code=reference.config.model_type == "mpt",
    )
    atol = float(cfg.export.verify_atol)
    if not diff <= atol:  # also catches NaN
        raise ExportMismatch(
            f"exported model's logits differ from the trained model's by {diff:.3g} "
            f"(> export.verify_atol={atol}) on {batch['input_ids'].shape[0]} val clients"
        )
    log.info("export: logits match the trained model (max |diff| %.2e <= %.0e)", diff, atol)
    # What the model was trained on, for runs that apply it to other data (embed.model=<this hf/>).
    write_record(out, make_record(RunSpec.from_config(cfg), require(cfg, "tokenizer")))
    return {
        **counts,
        "backend": backend,
        "max_abs_logit_diff": diff,
        "verify_atol": atol,
        "verify_clients": int(batch["input_ids"].shape[0]),
        "precision": cfg.export.precision,
    }


def run(cfg: DictConfig) -> Path:
    return run_stage(cfg, STAGE, lambda out: build(cfg, out))


def summary_line(c: dict, seconds: float, folder: Path) -> str:
    return (
        f"{c.get('checkpoint')} -> Hugging Face ({c.get('precision')}), max |logit diff| vs Composer "
        f"{c.get('max_abs_logit_diff')} on {c.get('verify_clients')} clients"
    )


main = stage_main(run, summary_line)

if __name__ == "__main__":
    main()
