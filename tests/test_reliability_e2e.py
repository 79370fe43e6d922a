"""Conditions a user fixes, end to end through a stage's entry point: one line naming the cause and the fix,
exit status 2, nothing partial left.

- No space left on the device: a stage writing onto a full file system (a small tmpfs mounted by the test);
  once space is back the same command finishes.
- A fold of the validation protocol whose validation part holds one class only.

Mounting needs root (CAP_SYS_ADMIN); where that is not permitted the test is skipped with the reason, except in
CI (CI set), where it must run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from embed_fixtures import write_data
from llm4trx.core.config import compose
from llm4trx.core.stage import read_success, stage_dir
from pipeline_helpers import ROOT, child_env

N_CLIENTS = 300
MARGIN = 96 * 1024  # free bytes left on the full disk: room for the stage's log file, not for its outputs


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip()}): needs root with CAP_SYS_ADMIN"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave: int) -> Path:
    """A file taking all the space of `mount` but `leave` bytes."""
    stat = os.statvfs(mount)
    filler = mount / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_a_full_disk_is_one_line_nothing_partial_and_the_rerun_finishes(tmpfs, tmp_path):
    from llm4trx.data.synthetic import ensure_raw

    args = [
        f"paths.output_root={tmpfs / 'outputs'}",
        f"dataset.n_clients={N_CLIENTS}",
        f"dataset.raw_dir={tmp_path / 'raw'}",
        "progress=false",
    ]
    cfg = compose(args)
    ensure_raw(cfg.dataset)  # the raw files on another disk: only the stage's outputs go to the full one
    final = stage_dir(cfg, "prepare")
    filler = fill(tmpfs, MARGIN)

    def prepare():
        return subprocess.run(
            [sys.executable, "-m", "llm4trx.prepare", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=300,
        )

    full = prepare()
    assert full.returncode == 2, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and len(full.stderr.splitlines()) <= 2, full.stderr  # (and the loader's warning)
    assert "No space left on device" in errors[0]
    assert "free space or set paths.output_root to another disk" in errors[0]
    assert f"writing {final}" in errors[0]  # pyarrow names no file: the stage's folder is named
    assert "Traceback" not in full.stderr
    assert not final.exists() and not list(final.parent.glob(f".{final.name}*"))

    filler.unlink()  # space is back
    rerun = prepare()
    assert rerun.returncode == 0, rerun.stderr
    assert read_success(final)["counts"]["clients"] > 0


def test_a_fold_whose_validation_part_has_one_class_is_one_line(out_root):
    args = [
        f"paths.output_root={out_root}",
        "dataset.n_clients=150",
        "dataset.max_events=40",
        "progress=false",
        "validate.feature_sets=[aggregates]",
        "validate.concatenations=[]",
        "validate.n_jobs=1",
        "validate.lightgbm_seed=run",  # aggregates validated by this stage itself, not by the shared baselines
    ]
    data = write_data(compose(args))
    splits, targets = pd.read_parquet(data / "splits.parquet"), pd.read_parquet(data / "targets.parquet")
    fold2 = splits.loc[(splits["fold"] == 2) & (splits["split"] != "test"), "client_id"]
    targets.loc[targets["client_id"].isin(fold2), "target"] = 1
    targets.to_parquet(data / "targets.parquet", index=False)
    done = subprocess.run(
        [sys.executable, "-m", "llm4trx.validate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and len(done.stderr.splitlines()) <= 2, done.stderr  # (and the loader's warning)
    assert f"column 'target': fold 2: its validation part ({len(fold2)} clients) has one class only (1)" in errors[0]
    assert "splits.n_folds" in errors[0] and "Traceback" not in done.stderr
    assert not (out_root / "smoke" / "synthetic" / "seed_42" / "validation").exists()
