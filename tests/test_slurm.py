"""A real single-node SLURM cluster on this machine (scripts/slurm/local_cluster.sh): the sbatch scripts and
the hydra-submitit launcher submit to it. Needs root and the Debian packages slurm-wlm and munge (.ci/run
installs them); skips, saying so, where they are missing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_helpers import SMOKE_SEEDS, SPARK_TEST_CONF, SPARK_TEST_JVM, TINY, child_env

ROOT = Path(__file__).resolve().parents[1]
# One cluster for the module's light tests (daemons on this machine; the pipeline job reads the shared smoke
# run's root, so one xdist worker runs them with the tests of that root: tests/conftest.py). The two long jobs
# (requeue, Spark inside a job) start a cluster of their own, so that the other worker can run them meanwhile:
# two local clusters on other ports and state folders run side by side.
pytestmark = [pytest.mark.slurm]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_cluster(state: Path):
    """scripts/slurm/local_cluster.sh's cluster in `state` on free ports: the environment that submits to it."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"SLURM not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge (.ci/run does)"
        )
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs its daemons as root; run the tests as root")
    env = child_env(LLM4TRX_SLURMCTLD_PORT=str(free_port()), LLM4TRX_SLURMD_PORT=str(free_port()))
    script = ROOT / "scripts" / "slurm" / "local_cluster.sh"
    started = subprocess.run(["bash", script, "start", state], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        env["SLURM_CONF"] = str(state / "slurm.conf")
        env["LLM4TRX_SLURM_LOGS"] = str(state / "logs")
        yield env
    finally:
        subprocess.run(["bash", script, "stop", state], timeout=60)
    assert not any((state / f"{d}.pid").exists() for d in ("munged", "slurmctld", "slurmd"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


@pytest.fixture
def own_cluster(tmp_path_factory):
    """A cluster for one long test, so that it is not tied to the module's (and to the smoke run's worker)."""
    with local_cluster(tmp_path_factory.mktemp("slurm_own")) as env:
        yield env


def job_log(cluster, proc) -> str:
    job_id = re.search(r"submit\.sh: job (\d+) queued", proc.stdout).group(1)
    return (Path(cluster["LLM4TRX_SLURM_LOGS"]) / f"slurm-{job_id}.out").read_text()


def submit(env, job, *args, timeout=600):
    return subprocess.run(
        ["bash", "scripts/slurm/submit.sh", job, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_failing_pipeline_job_is_a_nonzero_exit_of_the_submission(cluster, tmp_path):
    proc = submit(
        cluster,
        "scripts/slurm/pipeline.sbatch",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--",
        f"paths.output_root={tmp_path}",
        "seeds=[1]",
        "dataset=rosbank",
        f"dataset.raw_dir={tmp_path / 'no_such_dir'}",
        "dataset.download=null",  # no fetch: the stage's own error
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    # The stage's own one-line error reaches the submitting terminal, then the job's state.
    assert "dataset.raw_dir is not a folder" in proc.stderr
    assert "submit.sh: job" in proc.stderr and "failed (exit" in proc.stderr


def test_pipeline_job_runs_the_seeds_and_the_report(cluster, smoke_run):
    # The shared smoke run's root and seeds: the job finds every stage done and writes the report.
    root = smoke_run.root
    proc = submit(
        cluster,
        "scripts/slurm/pipeline.sbatch",
        "--gpus-per-node=0",
        "--cpus-per-task=2",
        "--",
        *TINY,
        f"paths.output_root={root}",
        f"seeds=[{','.join(map(str, SMOKE_SEEDS))}]",
        f"report.dir={root / 'slurm_report'}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = job_log(cluster, proc)
    assert "pipeline.sbatch: job" in log
    assert all(f"run.sh [seed {seed}]: finished" in log for seed in SMOKE_SEEDS)
    assert f"report: {root / 'slurm_report'}/report.md" in log
    summary = json.loads((root / "slurm_report" / "report.json").read_text())["datasets"]["synthetic"]
    assert summary["seeds"] == list(SMOKE_SEEDS) and {"llm", "aggregates", "coles", "random"} <= set(
        summary["feature_sets"]
    )


@pytest.mark.skipif(
    not os.environ.get("LLM4TRX_TEST_MULTINODE"),
    reason="pretrains one more seed (minutes on 2 cores); set LLM4TRX_TEST_MULTINODE=1 to run it",
)
def test_multinode_script_pretrains_through_srun_and_composer(cluster, smoke_run):
    """The multi-node script on this one-node cluster: srun starts one Composer launcher per node (here one)."""
    root = smoke_run.root
    proc = submit(
        cluster,
        "scripts/slurm/pretrain_multinode.sbatch",
        "--nodes=1",
        "--gpus-per-node=0",
        "--cpus-per-task=2",
        "--",
        *TINY,
        f"paths.output_root={root}",
        "seed=4",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = job_log(cluster, proc)
    assert re.search(r"pretrain on 1 node\(s\) x 1 process\(es\), rendezvous \S+:\d+", log), log[-2000:]
    run_dir = root / "smoke" / "synthetic" / "seed_4"
    assert (run_dir / "checkpoints" / "_SUCCESS.json").is_file()
    assert (run_dir / "validation" / "results.json").is_file()


def test_hydra_submitit_launcher_submits_one_job_per_sweep_point(cluster, tmp_path):
    """`python -m llm4trx.<stage> -m hydra/launcher=slurm ...`: one SLURM job per point (a cheap stage here)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm4trx.prepare",
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"paths.output_root={tmp_path}",
            "dataset.n_clients=100",
            "experiment_name=sweep_a,sweep_b",
        ],
        cwd=ROOT,
        env=cluster,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("sweep_a", "sweep_b"):
        done = json.loads((tmp_path / name / "synthetic" / "shared" / "data" / "_SUCCESS.json").read_text())
        assert done["counts"]["clients"] == 100
    job_dirs = [p for p in (tmp_path / "sweep" / ".submitit").iterdir() if re.fullmatch(r"\d+_\d", p.name)]
    assert len(job_dirs) == 2  # one array task per sweep point


def test_time_limit_warning_requeues_and_pretraining_resumes(own_cluster, tmp_path):
    """SIGUSR1 to the batch shell (what `#SBATCH --signal=B:USR1@600` sends before the time limit) during
    pretraining: the stage stops, the job is requeued, and the requeued run resumes from the last checkpoint.
    An output root of its own (not the shared smoke run's), so that it runs beside the smoke run's tests."""
    import time

    # Up to pretraining (the stage that resumes): the stages after it would rerun as on any rerun.
    cluster = {**own_cluster, "STAGES": "..pretrain"}
    root = tmp_path / "outputs"
    overrides = [
        *TINY,
        f"paths.output_root={root}",
        "seeds=[7]",
        "trainer.max_duration=40ba",
        "trainer.save_interval=10ba",
        "trainer.eval_interval=20ba",
        f"report.dir={tmp_path / 'report'}",
    ]
    proc = subprocess.Popen(
        [
            "bash",
            "scripts/slurm/submit.sh",
            "scripts/slurm/pipeline.sbatch",
            "--gpus-per-node=0",
            "--cpus-per-task=2",
            "--",
            *overrides,
        ],
        cwd=ROOT,
        env=cluster,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoints = root / "smoke" / "synthetic" / "seed_7" / "checkpoints"
    try:
        first = proc.stdout.readline()
        job_id = re.search(r"submit\.sh: job (\d+) queued", first).group(1)
        deadline = time.time() + 500
        while not (checkpoints / "latest-rank0.pt").exists():
            assert proc.poll() is None and time.time() < deadline, "no checkpoint before the job ended or in time"
            time.sleep(0.5)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=cluster, check=True, timeout=60)
        out, err = proc.communicate(timeout=900)
    finally:
        proc.kill()
    log = (Path(cluster["LLM4TRX_SLURM_LOGS"]) / f"slurm-{job_id}.out").read_text()
    assert proc.returncode == 0, first + out + err + log[-3000:]
    assert "got the time-limit warning (SIGUSR1)" in log and f"job {job_id} requeued" in log, log[-3000:]
    assert "interrupted by SIGTERM" in log and "(restart 1)" in log
    done = json.loads((checkpoints / "_SUCCESS.json").read_text())["counts"]
    assert done["steps"] == 40 and done["resumed_from_step"] >= 10, done
    assert re.search(r"pretrain: done in [\d.]+ s: 40 steps, .*resumed from step \d+", log)
    assert not list(checkpoints.parent.glob(".*.tmp-*")) and not (checkpoints.parent / "hf").exists()
    assert "no report without validate" in log


def test_spark_stages_job_starts_a_standalone_cluster_and_runs_prepare_and_text(own_cluster, tmp_path):
    """scripts/slurm/spark_stages.sbatch: a master and one worker per node (here one) inside the job, prepare and
    text with engine=spark on it, byte-equal to the embedded engine; the cluster is gone when the job ends."""
    import filecmp

    from llm4trx.core.config import compose
    from llm4trx.core.stage import stage_dir
    from llm4trx.prepare import run as prepare
    from llm4trx.text import run as text

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java on this machine (scripts/setup.sh installs a headless JRE)")
    cluster = own_cluster
    small = [f"dataset.raw_dir={tmp_path / 'raw'}", "dataset.n_clients=80", "dataset.max_events=30"]
    embedded = compose([f"paths.output_root={tmp_path / 'embedded'}", *small])
    prepare(embedded), text(embedded)
    port = free_port()
    env = {
        **cluster,
        "SPARK_MASTER_HOST": "127.0.0.1",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_MASTER_PORT": str(port),
        "SPARK_WORKER_MEMORY": "1g",
        "SPARK_DAEMON_MEMORY": "256m",
        "SPARK_DAEMON_JAVA_OPTS": SPARK_TEST_JVM,
        "SPARK_WORKER_DIR": str(tmp_path / "spark"),
    }
    proc = submit(
        env,
        "scripts/slurm/spark_stages.sbatch",
        "--nodes=1",
        "--cpus-per-task=2",
        "--",
        f"paths.output_root={tmp_path / 'spark_out'}",
        *small,
        "engine=spark",
        "engine.spark.partitions=2",
        "+engine.spark.conf.spark.executor.memory=512m",
        *SPARK_TEST_CONF,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = job_log(cluster, proc)
    assert f"1 worker(s) ALIVE at spark://127.0.0.1:{port}" in log, log[-3000:]
    assert "run.sh [seed" in log and "cluster at" in log and "stopped" in log
    on_cluster = compose([f"paths.output_root={tmp_path / 'spark_out'}", *small])
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "stats.json"):
        assert filecmp.cmp(stage_dir(embedded, "text") / name, stage_dir(on_cluster, "text") / name, shallow=False)
    assert list((tmp_path / "spark").glob("*/app-*")), "no executor ran on the job's worker"
    with socket.socket() as sock:  # the master went with the job
        assert sock.connect_ex(("127.0.0.1", port)) != 0
