"""No traceback for a condition a user can fix, through a single stage as through run.sh; interrupted stages
leave no temporary folder and the rerun continues (llm4trx.core.cli, llm4trx.core.stage)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm4trx.core import cli
from llm4trx.core.config import compose
from llm4trx.core.stage import TMP_MARK, atomic_dir, read_success, stage_dir
from pipeline_helpers import ROOT, child_env, run_script


def stage(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = child_env(PYTHONPATH=str(ROOT / "source"))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return lines[0]


def test_unknown_key_is_the_same_line_through_a_stage_and_run_sh(out_root):
    single = one_line(stage("llm4trx.prepare", f"paths.output_root={out_root}", "enigne=spark"))
    assert single == "error: unknown config group or key 'enigne': check the spelling (groups are the folders of conf/)"
    via_script = run_script("scripts/run.sh", f"paths.output_root={out_root}", "enigne=spark", timeout=180)
    assert via_script.returncode == 2 and via_script.stderr.strip() == single
    assert not out_root.exists()


def test_output_root_that_cannot_be_created_is_one_line():
    line = one_line(stage("llm4trx.prepare", "paths.output_root=/proc/nope"))
    assert "/proc/nope" in line and "paths.output_root" in line


def test_missing_raw_folder_is_one_line_after_the_start_line(out_root, tmp_path):
    proc = stage(
        "llm4trx.prepare", f"paths.output_root={out_root}", "dataset=rosbank", f"dataset.raw_dir={tmp_path / 'nowhere'}"
    )
    assert "dataset.raw_dir is not a folder" in one_line(proc)
    assert proc.stdout.startswith("prepare: started") and "(log: " in proc.stdout


@pytest.mark.parametrize(
    "code, says",
    [
        (errno.ENOSPC, "no space left"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
    ],
)
def test_filesystem_conditions_name_the_file_and_the_fix(code, says):
    line = cli.user_message(OSError(code, os.strerror(code), "/data/out/events.parquet"))
    assert line.startswith("/data/out/events.parquet: ") and says in line and "paths.output_root" in line


def test_an_unexpected_error_is_one_line_pointing_at_the_traceback_in_the_log(out_root, monkeypatch):
    # A bug (here: a TypeError raised inside the build) keeps its traceback, in the stage's log file only.
    script = (
        "import sys, llm4trx.data.loaders as l\n"
        "def broken(ds): raise TypeError('boom')\n"
        "l.load = broken\n"
        "from llm4trx import prepare\n"
        "sys.argv[0] = 'prepare'\n"
        "prepare.main()\n"
    )
    env = child_env(PYTHONPATH=str(ROOT / "source"))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            f"paths.output_root={out_root}",
            "dataset.n_clients=50",
            "hydra.job.name=prepare",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "TypeError: boom" in lines[0] and "Traceback" not in proc.stderr
    log_file = Path(lines[0].split("traceback is in ")[1].rstrip(")"))
    text = log_file.read_text()
    assert "Traceback" in text and "in broken" in text and "TypeError: boom" in text


def test_library_chatter_goes_to_the_log_file_and_the_console_keeps_two_lines(out_root):
    proc = stage("llm4trx.prepare", f"paths.output_root={out_root}", "dataset.n_clients=50", "progress=false")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("prepare: started") and out[1].startswith("prepare: done in")
    assert "events" in out[1] and "clients" in out[1]
    log_file = Path(out[0].split("(log: ")[1].rstrip(")"))
    assert "prepare synthetic:" in log_file.read_text()  # the stage's INFO lines are in the file


def test_sigterm_removes_the_temporary_folder_and_the_rerun_finishes(out_root):
    cfg = compose([f"paths.output_root={out_root}", "dataset.n_clients=3000"])
    final = stage_dir(cfg, "prepare")
    command = [sys.executable, "-m", "llm4trx.prepare", f"paths.output_root={out_root}", "dataset.n_clients=3000"]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=child_env(PYTHONPATH=str(ROOT / "source")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tmp = final.parent / f".{final.name}{TMP_MARK}{proc.pid}"
    try:
        deadline = time.time() + 120
        while not tmp.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no temporary folder within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert not tmp.exists() and not final.exists()
    assert not list(final.parent.glob(f".{final.name}.*"))
    rerun = stage(*command[2:])
    assert rerun.returncode == 0, rerun.stderr
    assert read_success(final) is not None


def test_a_killed_build_is_swept_by_the_next_one(tmp_path):
    final = tmp_path / "stage"
    # A temporary folder of a process that no longer runs (SIGKILL leaves one: no handler runs).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".stage{TMP_MARK}{dead.pid}"
    (stale / "sub").mkdir(parents=True)
    alive = tmp_path / f".stage{TMP_MARK}{os.getppid()}"  # a live process's build is left alone
    alive.mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
    assert not stale.exists() and alive.exists() and (final / "x").read_text() == "1"


def test_coles_trains_on_long_enough_clients_only():
    import torch

    from llm4trx.coles import MIN_TRAIN_CLIENTS, qualifying

    records = [{"client_id": str(n), "event_time": torch.arange(n)} for n in (1, 3, 15, 40)]
    kept, too_short = qualifying(records, 15)
    assert [r["client_id"] for r in kept] == ["15", "40"] and too_short == 2
    assert len(qualifying(records, 41)[0]) < MIN_TRAIN_CLIENTS  # -> the stage is skipped, with the reason


def test_summary_lines_give_the_figure_of_each_stage(tmp_path):
    import json

    folder = tmp_path / "coles"
    folder.mkdir()
    (folder / "_SUCCESS.json").write_text(json.dumps({"seconds": 2, "counts": {"skipped": "0 of 90 clients ..."}}))
    from llm4trx.coles import summary_line

    assert cli.summary(folder, summary_line) == "skipped: 0 of 90 clients ..."
    (folder / "_SUCCESS.json").write_text(
        json.dumps({"seconds": 2, "counts": {"clients": 100, "train_clients": 80, "too_short": 10, "dim": 8}})
    )
    assert (
        cli.summary(folder, summary_line)
        == "trained on 80 clients (10 shorter than min_seq_len left out), embedded 100"
    )
