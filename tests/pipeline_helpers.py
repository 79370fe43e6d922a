"""Running the pipeline scripts from tests on a very small smoke configuration, shared by the test modules."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]

# Few clients, few steps: one seed of the whole pipeline in about a minute on 2 cores.
TINY = [
    "experiment=smoke",
    "dataset.n_clients=300",
    "trainer.max_duration=10ba",
    "trainer.eval_interval=5ba",
    "trainer.save_interval=10ba",
    "coles.max_epochs=1",
    "progress=false",
]


# JVM flags for the tests' Spark jobs, which last seconds: the client compiler only and one garbage-collector
# thread. On 2 cores the JIT's and GC's own threads cost more than they save there (tests/test_spark_cluster.py:
# 151 -> 125 CPU-s). For the daemons (SPARK_DAEMON_JAVA_OPTS) and, through the config, drivers and executors.
SPARK_TEST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
SPARK_TEST_CONF = [
    f"+engine.spark.conf.spark.driver.extraJavaOptions='{SPARK_TEST_JVM}'",
    f"+engine.spark.conf.spark.executor.extraJavaOptions='{SPARK_TEST_JVM}'",
]


# The shared smoke run (conftest's `smoke_run` fixture): these seeds, side by side, into smoke_root().
SMOKE_SEEDS = (1, 2)
SMOKE_RUN = [*TINY, "parallel_seeds=2"]


def shared_tmp(tmp_path_factory) -> Path:
    """This test run's temporary folder shared by every xdist worker (each worker's own is a folder in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def smoke_root(tmp_path_factory) -> Path:
    """One output root per test run: the smoke run's, which modules reuse (scripts skip finished stages)."""
    return shared_tmp(tmp_path_factory) / "smoke_outputs"


@dataclass(frozen=True)
class SmokeRun:
    root: Path
    stdout: str


def smoke_run(tmp_path_factory) -> SmokeRun:
    """run_multi_seed.sh over SMOKE_SEEDS into smoke_root(), once per test run: the first worker to ask builds
    it under a file lock and records its output; the others (and later asks) read the record."""
    root = smoke_root(tmp_path_factory)
    record = root.with_name(root.name + ".json")
    with FileLock(f"{record}.lock"):
        if not record.exists():
            proc = run_script(
                "scripts/run_multi_seed.sh",
                *SMOKE_RUN,
                f"paths.output_root={root}",
                env={"SEEDS": " ".join(map(str, SMOKE_SEEDS))},
                timeout=1800,
            )
            record.write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))
        done = json.loads(record.read_text())
    assert done["returncode"] == 0, done["stdout"][-3000:] + done["stderr"][-3000:]
    return SmokeRun(root, done["stdout"])


# Exported into os.environ by libraries run in-process by other tests (Composer, accelerate under the HF
# Trainer), and still needed there while torch.distributed stays initialised in the test process. A child
# process (run.sh, sbatch) that inherited them would take itself for one rank of a distributed job.
DISTRIBUTED_VARIABLES = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
}


def child_env(**extra: str) -> dict[str, str]:
    """The test process's environment without distributed-launch variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES and not k.startswith("ACCELERATE_")}
    env.update(extra)
    return env


def run_script(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=child_env(**(env or {}))
    )
