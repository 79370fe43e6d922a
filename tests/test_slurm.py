"""A real single-node SLURM cluster on this machine (scripts/slurm/local_cluster.sh): the sbatch scripts and
the hydra-submitit launcher submit to it. Needs root and the Debian packages slurm-wlm and munge (.ci/run
installs them); skips, saying so, where they are missing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm

# Few clients, few steps: the whole pipeline of one seed in about a minute on 2 cores.
TINY = [
    "experiment=smoke",
    "dataset.n_clients=300",
    "trainer.max_duration=10ba",
    "trainer.eval_interval=5ba",
    "trainer.save_interval=10ba",
    "progress=false",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge (.ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs its daemons as root; run the tests as root")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "LLM4TRX_SLURMCTLD_PORT": str(free_port()), "LLM4TRX_SLURMD_PORT": str(free_port())}
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


def submit(env, job, *args, timeout=600):
    return subprocess.run(
        ["bash", "scripts/slurm/submit.sh", job, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def test_failing_pipeline_job_is_a_nonzero_exit_of_the_submission(cluster, tmp_path):
    proc = submit(
        cluster, "scripts/slurm/pipeline.sbatch", "--gpus-per-node=0", "--cpus-per-task=1", "--",
        f"paths.output_root={tmp_path}", "seeds=[1]", "dataset=rosbank",
        f"dataset.raw_dir={tmp_path / 'no_such_dir'}",
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    # The stage's own one-line error reaches the submitting terminal, then the job's state.
    assert "dataset.raw_dir is not a folder" in proc.stderr
    assert "submit.sh: job" in proc.stderr and "failed (exit" in proc.stderr
