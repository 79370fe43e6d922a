"""Run directories, stage folders and atomic, skippable stage builds.

Every stage writes one folder. The folder appears only when complete: it is built under a temporary sibling
and renamed into place, together with `_SUCCESS.json` holding the hash of everything the output depends on
(the stage's config sections and the hashes of its input stages), counts and timings. A rerun with the same
hash skips the stage; a different hash (or `force=true`) rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf

from llm4trx.errors import StageInputMissing

log = logging.getLogger(__name__)

SUCCESS_FILE = "_SUCCESS.json"

# stage -> (folder name, whether it is shared by all seeds of an experiment)
STAGES: dict[str, tuple[str, bool]] = {
    "prepare": ("data", True),
    "text": ("text", True),
    "tokenizer": ("tokenizer", True),
    "shards": ("mds", True),
    "augment": ("augment", True),
    "pretrain": ("checkpoints", False),
    "export": ("hf", False),
    "embed": ("embeddings", False),
    "coles": ("coles", False),
    "validate": ("validation", False),
}


def stage_dir(cfg: DictConfig, stage: str) -> Path:
    """Final folder of `stage` for the run described by `cfg`."""
    folder, shared = STAGES[stage]
    base = cfg.paths.shared_dir if shared else cfg.paths.run_dir
    return Path(base) / folder


def read_success(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / SUCCESS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def require(cfg: DictConfig, stage: str) -> Path:
    """Folder of a finished input stage, or a clear error naming the command that builds it."""
    folder = stage_dir(cfg, stage)
    if read_success(folder) is None:
        raise StageInputMissing(
            f"stage {stage!r} has not finished for this run (no {folder / SUCCESS_FILE}); "
            f"run `python -m llm4trx.{stage}` with the same overrides first"
        )
    return folder


def config_hash(cfg: DictConfig, keys: Iterable[str], inputs: Iterable[str] = ()) -> str:
    """Hash of the config sections `keys` (resolved) and of the finished input stages' hashes."""
    payload: dict[str, Any] = {}
    for key in keys:
        node = OmegaConf.select(cfg, key, throw_on_missing=True)
        payload[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    for stage in inputs:
        payload[f"input:{stage}"] = read_success(require(cfg, stage))["config_hash"]
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_complete(folder: Path, want_hash: str) -> bool:
    done = read_success(folder)
    return done is not None and done.get("config_hash") == want_hash


def is_up_to_date(cfg: DictConfig, stage: str) -> bool:
    """Whether `stage` would be skipped by run_stage for `cfg`, judged from its _SUCCESS.json alone (fast:
    no stage module is imported). False when unsure (no record of what the hash covers, inputs missing)."""
    if cfg.get("force", False):
        return False
    done = read_success(stage_dir(cfg, stage))
    if done is None or "keys" not in done:
        return False
    try:
        return config_hash(cfg, done["keys"], done.get("inputs", [])) == done["config_hash"]
    except Exception:  # an input stage missing or a key no longer resolvable: let the stage decide
        return False


def write_success(
    folder: Path,
    want_hash: str,
    started: float,
    counts: dict[str, Any] | None = None,
    keys: Iterable[str] = (),
    inputs: Iterable[str] = (),
) -> None:
    record = {
        "config_hash": want_hash,
        # What the hash covers, so that scripts can tell whether a stage is up to date without running it.
        "keys": list(keys),
        "inputs": list(inputs),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 3),
        "counts": counts or {},
    }
    tmp = Path(folder) / (SUCCESS_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, Path(folder) / SUCCESS_FILE)


def run_stage(
    cfg: DictConfig,
    stage: str,
    build: Callable[[Path], dict[str, Any] | None],
    keys: Iterable[str],
    inputs: Iterable[str] = (),
) -> Path:
    """Build `stage` atomically unless it is already complete for this config.

    `build(tmp_dir)` writes every output file under `tmp_dir` and returns counts for `_SUCCESS.json`.
    On any exception the temporary folder is removed and the previous output (if any) is left untouched.
    """
    keys, inputs = list(keys), list(inputs)
    final = stage_dir(cfg, stage)
    want = config_hash(cfg, keys, inputs)
    if not cfg.get("force", False) and is_complete(final, want):
        log.info("%s: up to date (%s), skipped", stage, final)
        return final

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    started = time.time()
    try:
        counts = build(tmp) or {}
        write_success(tmp, want, started, counts, keys, inputs)
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: wrote %s in %.1f s", stage, final, time.time() - started)
    return final


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing an older `dst` (two renames; no partial state)."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
