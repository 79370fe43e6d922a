"""scripts/run.sh's stage runner (llm4trx/core/stage_runner.py): stages forked from a process that keeps their
imports write what fresh processes write, and a signal to the runner stops it after the running stage."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from llm4trx.core import registry
from llm4trx.core.config import compose
from llm4trx.core.registry import pipeline
from llm4trx.core.stage_runner import fresh_command, preload
from pipeline_helpers import ROOT, SMOKE_RUN, SMOKE_SEEDS, TINY, child_env, run_script

SHARED = [s for s in pipeline(compose(TINY)) if registry.get(s).scope == "shared"]


def files(root: Path) -> dict[str, bytes]:
    """Every file a stage wrote, by path, without the logs and the timings of _SUCCESS.json."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "logs" not in p.parts and ".locks" not in p.parts and p.name != "_SUCCESS.json"
    }


@pytest.mark.slow
def test_forked_stages_write_what_fresh_processes_write(smoke_run, tmp_path):
    """The suite's shared smoke run forked its stages (run.sh's default on Linux); the same seed-independent
    stages started as fresh processes write the same files, byte for byte."""
    assert os.environ.get("LLM4TRX_FORK", "1") != "0", "the shared smoke run must fork its stages"
    root = tmp_path / "fresh"
    proc = run_script(
        "scripts/run.sh",
        *SMOKE_RUN,
        f"paths.output_root={root}",
        f"seed={SMOKE_SEEDS[0]}",
        env={"STAGES": " ".join(SHARED), "LLM4TRX_FORK": "0"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    done = [s for s in SHARED if f"{s}: done in" in proc.stdout]
    assert done == SHARED, proc.stdout[-3000:]
    fresh = files(root)
    assert len(fresh) > len(SHARED)  # events, texts, tokenizer files, shards, baselines...
    # Only the fresh pass's files are read from the smoke root (it also holds both seeds' models and outputs).
    forked = {name: smoke_run.root / name for name in fresh}
    assert [name for name, path in forked.items() if not path.is_file()] == []
    differ = [name for name in fresh if fresh[name] != forked[name].read_bytes()]
    assert differ == []


@pytest.mark.slow
def test_a_signal_to_the_runner_alone_stops_it_after_the_running_stage(tmp_path):
    """As the shell loop did: a SIGTERM that reaches only run.sh (the runner it execs into) lets the running
    stage finish, then stops with 128 + 15 instead of starting the next stage (signals meant for the stage reach
    it through the process group)."""
    root = tmp_path / "outputs"
    proc = subprocess.Popen(
        ["bash", "scripts/run.sh", *TINY, f"paths.output_root={root}", "seed=1"],
        cwd=ROOT,
        env=child_env(STAGES="prepare text"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "1/2 prepare: started" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=300)[0]
    out = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "1/2 prepare: done in" in out and "2/2 text" not in out, out[-3000:]
    shared = root / "smoke" / "synthetic" / "shared"
    assert (shared / "data" / "_SUCCESS.json").is_file() and not (shared / "text").exists()


def test_a_stage_that_cannot_be_imported_here_starts_as_its_own_process():
    assert preload("no_such_stage") is None
    assert fresh_command("no_such_stage", 1, ["seed=1"])[1:] == ["-m", "llm4trx.no_such_stage", "seed=1"]


def test_several_processes_go_through_the_launchers():
    pretrain = fresh_command("pretrain", 2, ["seed=1"])
    assert Path(pretrain[0]).name == "composer" and pretrain[1:] == ["-n", "2", "-m", "llm4trx.pretrain", "seed=1"]
    embed = fresh_command("embed", 2, [])
    assert Path(embed[0]).name == "accelerate" and embed[embed.index("--num_processes") + 1] == "2"
    assert embed[-2:] == ["-m", "llm4trx.embed"]


def test_every_declared_preload_imports():
    """A PRELOAD entry that stopped existing would silently turn its stage back into a fresh process."""
    import importlib

    for stage in registry.STAGES:
        module = importlib.import_module(f"llm4trx.{stage}")
        assert callable(module.main), stage
        for name in getattr(module, "PRELOAD", ()):
            importlib.import_module(name)


def test_a_signal_while_the_runner_imports_starts_no_stage(monkeypatch):
    """Ctrl-C during the runner's own imports (seconds for llm-foundry) must not go on to run the stage."""
    from llm4trx.core import stage_runner

    started = []

    def preload_then_interrupted(stage):
        os.kill(os.getpid(), signal.SIGINT)  # the runner's handler only remembers it
        return None

    monkeypatch.delenv(stage_runner.LABEL, raising=False)
    monkeypatch.setattr(stage_runner, "preload", preload_then_interrupted)
    monkeypatch.setattr(stage_runner, "run_fresh", lambda command, label: started.append(command) or 0)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = stage_runner.main(["--seed", "1", "--run-dir", "/nowhere", "--stages", "prepare text", "--", "seed=1"])
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert code == 128 + signal.SIGINT and started == []
    assert stage_runner.LABEL not in os.environ  # the label goes to the stage's process only


def test_a_forked_stage_ends_as_a_normal_exit_would_without_the_teardown(tmp_path):
    """The child skips Python's module teardown (seconds with torch and llm-foundry imported) but still stops its
    thread pools, joins its threads, runs its atexit handlers and flushes stdout, and exits with the stage's
    status; run in a subprocess because the child is forked from the process that calls run_forked."""
    script = tmp_path / "stage.py"
    script.write_text(
        f"""
import atexit, concurrent.futures, sys, threading, time, types
from llm4trx.core.stage_runner import run_forked

def main():
    atexit.register(lambda: open({str(tmp_path / "atexit")!r}, "w").write("ran"))
    pool = concurrent.futures.ThreadPoolExecutor(2)
    pool.submit(time.sleep, 0.1)  # a pool never shut down: the exit must stop its workers, not hang
    threading.Thread(target=lambda: (time.sleep(0.3), open({str(tmp_path / "thread")!r}, "w").write("done"))).start()
    sys.stdout.write("buffered, never flushed by the stage")
    sys.exit(int(sys.argv[1]))

module = types.SimpleNamespace(main=main, __file__="stage.py")
code = run_forked(module, [sys.argv[1]], "label")
print(f"\\nexit {{code}}")
"""
    )
    for status in (0, 3):
        proc = subprocess.run(
            [str(ROOT / ".venv/bin/python"), str(script), str(status)],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(PYTHONPATH=str(ROOT / "source")),
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"buffered, never flushed by the stage\nexit {status}\n"
        assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"


def test_an_output_folder_that_cannot_be_created_is_one_line(tmp_path):
    """The runner checks the overrides once for the stages it forks; when that check fails, the stage's own
    check reports it as it would started alone: one line, exit 2, nothing run."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_script(
        "scripts/run.sh", *TINY, f"paths.output_root={blocker}/outputs", "seed=1", env={"STAGES": "prepare"}
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot create the output folder" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_finished_rank_waits_for_the_others_then_exits_without_the_teardown(tmp_path):
    """core/cli.end_stage_process(0), which every rank of a multi-rank stage calls after the stage: two gloo ranks;
    rank 1 reaches the end a second later, and rank 0 must not exit before it (rank 0 hosts the store). Each
    runs its atexit handlers and exits 0, and nothing after the call runs (no interpreter teardown)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "rank.py"
    script.write_text(
        f"""
import atexit, os, time
import torch.distributed as dist
from llm4trx.core.cli import end_stage_process

rank = int(os.environ["RANK"])
dist.init_process_group("gloo")
atexit.register(lambda: open({str(tmp_path)!r} + f"/exit{{rank}}", "w").write(repr(time.time())))
if rank == 1:
    time.sleep(1.0)
    open({str(tmp_path)!r} + "/end1", "w").write(repr(time.time()))
end_stage_process(0)
print("after the end")
"""
    )
    ranks = [
        subprocess.Popen(
            [str(ROOT / ".venv/bin/python"), str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(
                PYTHONPATH=str(ROOT / "source"),
                RANK=str(rank),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            ),
        )
        for rank in (0, 1)
    ]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    for rank, (out, err) in zip(ranks, outputs):
        assert rank.returncode == 0, err
        assert "after the end" not in out
    end1 = float((tmp_path / "end1").read_text())
    assert float((tmp_path / "exit0").read_text()) >= end1  # rank 0 waited for rank 1 at the last barrier
    assert float((tmp_path / "exit1").read_text()) >= end1


def test_a_stage_started_as_its_own_process_ends_with_its_status_and_without_the_teardown(tmp_path):
    """`python -m llm4trx.<stage>` (no runner, LLM4TRX_FORK=0, spark-submit) ends through cli.end_stage_process as
    a forked stage does: atexit handlers run, the stage's status is the exit status (0, or 2 for a user error),
    and the interpreter's teardown (where pyarrow's pools can abort a finished process) never runs: an object
    whose finaliser would run in it leaves no trace."""
    script = tmp_path / "stage.py"
    script.write_text(
        f"""
import atexit, sys
from llm4trx.core.cli import stage_main
from llm4trx.core.errors import ConfigError

class TornDown:
    def __del__(self, open=open):  # builtins may be gone by then: keep `open`
        open({str(tmp_path / "teardown")!r}, "w").write("ran")

KEPT = TornDown()  # finalised when Python tears the module down at exit

def run(cfg):
    atexit.register(lambda: open({str(tmp_path / "atexit")!r}, "w").write("ran"))
    if cfg.seed == 3:
        raise ConfigError("seed 3 is refused")
    return {str(tmp_path)!r}

main = stage_main(run)
main()
"""
    )
    for seed, status in ((1, 0), (3, 2)):
        for marker in ("atexit", "teardown"):
            (tmp_path / marker).unlink(missing_ok=True)
        proc = subprocess.run(
            [str(ROOT / ".venv/bin/python"), str(script), f"paths.output_root={tmp_path}", f"seed={seed}"],
            capture_output=True,
            text=True,
            timeout=120,
            env=child_env(PYTHONPATH=str(ROOT / "source")),
        )
        assert proc.returncode == status, proc.stderr
        assert (tmp_path / "atexit").read_text() == "ran"
        assert not (tmp_path / "teardown").exists()
        assert (status == 2) == ("seed 3 is refused" in proc.stderr)
