"""Run directories, stage folders and atomic, skippable stage builds.

Every stage writes one folder. The folder appears only when complete: it is built under a temporary sibling
(`atomic_dir`) and renamed into place, together with `_SUCCESS.json` holding the hash of everything the output
depends on (the stage's config sections from the registry and the hashes of its input stages), counts and
timings. A rerun with the same hash skips the stage; a different hash (or `force=true`) rebuilds it.
Shared stages are built under a file lock, so seeds started together build each of them once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from llm4trx.core import registry
from llm4trx.core.errors import StageInputMissing

log = logging.getLogger(__name__)

SUCCESS_FILE = registry.SUCCESS.path
TMP_MARK = ".tmp-"  # temporary build folders: .<folder>.tmp-<pid>
LOCK_DIR = ".locks"  # build locks of shared stages: <shared_dir>/.locks/<folder>.lock (empty files that stay)


def scope_dir(cfg: DictConfig, scope: str) -> Path:
    if scope == registry.SHARED:
        return Path(cfg.paths.shared_dir)
    if scope == registry.SEED:
        return Path(cfg.paths.run_dir)
    return Path(cfg.paths.experiment_dir)


def stage_dir(cfg: DictConfig, stage: str) -> Path:
    """Final folder of `stage` for the run described by `cfg`."""
    s = registry.get(stage)
    if stage == "report":  # the one stage whose folder is a config key (a report may span experiments)
        return Path(cfg.report.dir)
    if s.scope == registry.RAW:  # download: the dataset's raw_dir, outside the run directory
        return Path(cfg.dataset.raw_dir)
    return scope_dir(cfg, s.scope) / s.folder


def seed_stage_dir(cfg: DictConfig, stage: str, seed: int, experiment_dir: str | Path | None = None) -> Path:
    """Folder of a per-seed `stage` for another seed (and optionally another experiment directory)."""
    changes: dict[str, Any] = {"seed": int(seed)}
    if experiment_dir is not None:
        changes["paths"] = {"experiment_dir": str(experiment_dir)}
    return stage_dir(OmegaConf.merge(cfg, changes), stage)


def is_finished(cfg: DictConfig, stage: str) -> bool:
    """Whether `stage` has finished for this run (whatever its config): _SUCCESS.json, or its `done` predicate."""
    done = registry.get(stage).done
    return done(cfg) if done is not None else read_success(stage_dir(cfg, stage)) is not None


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


# ------------------------------------------------------------------------------------------ hashing


def _drop(tree: Any, parts: list[str]) -> None:
    if not isinstance(tree, dict) or not parts:
        return
    if len(parts) == 1:
        tree.pop(parts[0], None)
    else:
        _drop(tree.get(parts[0]), parts[1:])


def hash_payload(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """What a stage's hash covers: its sections, resolved, without the operational keys (no input hashes)."""
    s = registry.get(stage)
    payload: dict[str, Any] = {}
    for section in registry.hashed_sections(cfg, stage):
        node = OmegaConf.select(cfg, section, throw_on_missing=True)
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        for key in s.operational:
            if key.startswith(section + "."):
                _drop(value, key[len(section) + 1 :].split("."))
        payload[section] = value
    return payload


def stage_hash(cfg: DictConfig, stage: str) -> str:
    """Hash of the stage's config sections and of its finished input stages' hashes."""
    payload = hash_payload(cfg, stage)
    external = registry.get(stage).external(cfg)
    if external:
        payload["external"] = external
    for name in registry.inputs_of(cfg, stage):
        payload[f"input:{name}"] = read_success(require(cfg, name))["config_hash"]
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_complete(folder: Path, want_hash: str) -> bool:
    done = read_success(folder)
    return done is not None and done.get("config_hash") == want_hash


def is_up_to_date(cfg: DictConfig, stage: str) -> bool:
    """Whether `stage` would be skipped by run_stage for `cfg` (fast: no stage module is imported)."""
    done = registry.get(stage).done
    if done is not None:  # RAW-scope stages: judged by their files, not by a hash (force does not refetch)
        return done(cfg)
    if cfg.get("force", False):
        return False
    try:
        return is_complete(stage_dir(cfg, stage), stage_hash(cfg, stage))
    except StageInputMissing:
        return False


def write_success(
    folder: Path,
    want_hash: str,
    started: float,
    counts: dict[str, Any] | None = None,
    cfg: DictConfig | None = None,
    stage: str | None = None,
) -> None:
    """`_SUCCESS.json` of a finished folder; with `cfg` and `stage`, also what the hash covers (for people)."""
    record = {
        "stage": stage,
        "config_hash": want_hash,
        "sections": registry.hashed_sections(cfg, stage) if cfg is not None and stage else [],
        "inputs": registry.inputs_of(cfg, stage) if cfg is not None and stage else [],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 3),
        "counts": counts or {},
    }
    tmp = Path(folder) / (SUCCESS_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, Path(folder) / SUCCESS_FILE)


# ------------------------------------------------------------------------------------------ atomic folders


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_stale(final: Path) -> list[Path]:
    """Remove temporary siblings of `final` left by processes that no longer run (killed builds)."""
    removed = []
    if not final.parent.is_dir():
        return removed
    for path in final.parent.glob(f".{final.name}.*-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d stale temporary folder(s) of killed runs beside %s", len(removed), final)
    return removed


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of `final`; on success it replaces `final`, on any error it is removed
    and `final` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)
    tmp = final.parent / f".{final.name}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def build_lock(cfg: DictConfig, stage: str) -> Iterator[None]:
    """Exclusive right to build a shared stage; per-seed stages need none (one run per seed)."""
    if registry.get(stage).scope != registry.SHARED:
        yield
        return
    final = stage_dir(cfg, stage)
    locks = final.parent / LOCK_DIR
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(locks / f"{final.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Exception:  # filelock.Timeout: another process is building it
        log.info("%s: another process is building %s; waiting for it", stage, final)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# The stages this process found up to date (a shared one possibly after waiting for another process to build
# it): their console end line says "up to date, skipped", even though their _SUCCESS.json is newer than the start.
FOUND_UP_TO_DATE: set[str] = set()


def run_stage(cfg: DictConfig, stage: str, build: Callable[[Path], dict[str, Any] | None]) -> Path:
    """Build `stage` atomically unless it is already complete for this config.

    `build(tmp_dir)` writes every output file under `tmp_dir` and returns counts for `_SUCCESS.json`.
    On any exception the temporary folder is removed and the previous output (if any) is left untouched.
    """
    final = stage_dir(cfg, stage)
    force = bool(cfg.get("force", False))
    with build_lock(cfg, stage):
        want = stage_hash(cfg, stage)  # after the lock: inputs may have been rebuilt meanwhile
        if not force and is_complete(final, want):
            FOUND_UP_TO_DATE.add(stage)
            log.info("%s: up to date (%s), skipped", stage, final)
            return final
        started = time.time()
        with atomic_dir(final) as tmp:
            counts = build(tmp) or {}
            write_success(tmp, want, started, counts, cfg, stage)
    log.info("%s: built %s in %.1f s", stage, final, time.time() - started)
    return final
