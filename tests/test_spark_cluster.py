"""engine=spark on a real standalone cluster: a master and two workers started from pyspark's own distribution
(`$SPARK_HOME/bin/spark-class ...deploy.master.Master` / `...deploy.worker.Worker`, separate JVMs talking TCP
as on a rack, all bound to 127.0.0.1), driven by the stage CLIs and by `spark-submit`
(scripts/spark_submit.sh). Outputs must be identical to the embedded engine's; a worker killed mid-job
must not change them; a master URL nobody answers is one line, fast. One cluster for the module."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from llm4trx.core.config import compose
from llm4trx.core.spark import java_available
from llm4trx.core.stage import read_success, stage_dir
from llm4trx.prepare import run as prepare
from llm4trx.text import run as text
from pipeline_helpers import SPARK_TEST_CONF, SPARK_TEST_JVM, child_env

if not java_available():  # CI installs a JRE (scripts/setup.sh): there the tests must run, not skip
    if os.environ.get("CI"):
        raise RuntimeError("engine=spark tests need Java on CI: scripts/setup.sh installs openjdk-17-jre-headless")
    pytest.skip("no Java on this machine (scripts/setup.sh installs a headless JRE)", allow_module_level=True)
pyspark = pytest.importorskip("pyspark")

ROOT = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).parent
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("spark_cluster")]

SMALL = [
    "dataset.n_clients=120",
    "dataset.min_events=5",
    "dataset.max_events=40",
    "dataset.schema=rosbank",
    "progress=false",
]
# Small executors (one core, 512 MiB each) and several tasks per stage, so both workers get work.
ON_CLUSTER = [
    "engine=spark",
    "engine.spark.partitions=4",
    "engine.spark.block_bytes=20000",
    "+engine.spark.conf.spark.executor.memory=512m",
    "+engine.spark.conf.spark.executor.cores=1",
    "+engine.spark.conf.spark.cores.max=2",
    "+engine.spark.conf.spark.sql.shuffle.partitions=4",
    *SPARK_TEST_CONF,
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A standalone master and its workers, each a `spark-class` JVM in the foreground (its own process group)."""

    def __init__(self, state: Path):
        self.state = state
        self.port, self.ui = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        # SPARK_LOCAL_IP: every daemon and the driver bind the loopback, never the machine's external interface.
        self.env = child_env(
            SPARK_HOME=str(SPARK_HOME),
            SPARK_LOCAL_IP="127.0.0.1",
            SPARK_DAEMON_MEMORY="256m",
            SPARK_DAEMON_JAVA_OPTS=SPARK_TEST_JVM,
            SPARK_LOG_DIR=str(state / "logs"),
            PYSPARK_PYTHON=sys.executable,
        )
        self.master = self.start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui),
        )
        self.workers: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.state / f"{name}.log", "ab")
        return subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def add_worker(self, name: str) -> None:
        self.workers[name] = self.start(
            name,
            "org.apache.spark.deploy.worker.Worker",
            self.url,
            "--host",
            "127.0.0.1",
            "--cores",
            "1",
            "--memory",
            "1g",
            "--webui-port",
            "0",
            "--work-dir",
            str(self.state / name),
        )

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui}/json/", timeout=2) as answer:
                return sum(w["state"] == "ALIVE" for w in json.load(answer)["workers"])
        except OSError:
            return 0

    def wait_workers(self, n: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while self.alive_workers() != n:
            assert self.master.poll() is None, (self.state / "master.log").read_text()[-2000:]
            assert time.time() < deadline, f"{n} workers not ALIVE within {timeout} s"
            time.sleep(0.5)

    def stop(self, proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)  # the JVM and the executors it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("spark_cluster")
    assert (SPARK_HOME / "bin" / "spark-class").is_file(), "pyspark's wheel ships bin/spark-class"
    c = Cluster(state)
    try:
        for name in ("worker1", "worker2"):
            c.add_worker(name)
        c.wait_workers(2)
        yield c
    finally:
        for proc in [*c.workers.values(), c.master]:
            c.stop(proc)


def stage_cli(cluster, stage: str, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"llm4trx.{stage}", *overrides],
        cwd=ROOT,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_same_prepare(a_cfg, b_cfg) -> None:
    """The same events (as a table: Spark writes events.parquet in parts), the same targets and splits bytes."""
    import pandas as pd

    a, b = stage_dir(a_cfg, "prepare"), stage_dir(b_cfg, "prepare")
    pd.testing.assert_frame_equal(pd.read_parquet(a / "events.parquet"), pd.read_parquet(b / "events.parquet"))
    for name in ("targets.parquet", "splits.parquet"):
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    assert read_success(a)["config_hash"] == read_success(b)["config_hash"]


def assert_same_text(a_cfg, b_cfg) -> None:
    ta, tb = stage_dir(a_cfg, "text"), stage_dir(b_cfg, "text")
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "stats.json"):
        assert filecmp.cmp(ta / name, tb / name, shallow=False), name


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The embedded engine's prepare and text (in this process), and the raw files every run reads."""
    root = tmp_path_factory.mktemp("embedded_run")
    cfg = compose([f"paths.output_root={root}/out", f"dataset.raw_dir={root}/raw", *SMALL])
    prepare(cfg), text(cfg)
    return root / "raw", cfg


def test_prepare_and_text_on_the_cluster_equal_embedded(cluster, embedded, tmp_path):
    raw, emb = embedded
    overrides = [
        f"paths.output_root={tmp_path}",
        f"dataset.raw_dir={raw}",
        *SMALL,
        *ON_CLUSTER,
        f"engine.spark.master={cluster.url}",
    ]
    for stage in ("prepare", "text"):
        proc = stage_cli(cluster, stage, *overrides)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert_same_prepare(emb, compose(overrides))
    assert_same_text(emb, compose(overrides))
    # The executors ran on the workers (an app folder in each worker's work dir), not in the driver.
    for name in ("worker1", "worker2"):
        assert list((cluster.state / name).glob("app-*/*")), f"{name} ran no executor"


def test_spark_submit_runs_prepare_on_the_cluster(cluster, embedded, tmp_path):
    """scripts/spark_submit.sh: spark-submit's --master and --conf reach the stage (engine.spark.master null)."""
    raw, emb = embedded
    overrides = [
        f"paths.output_root={tmp_path}",
        f"dataset.raw_dir={raw}",
        *SMALL,
        *[o for o in ON_CLUSTER if not o.startswith("+engine.spark.conf")],
    ]
    proc = subprocess.run(
        [
            "bash",
            "scripts/spark_submit.sh",
            "--master",
            cluster.url,
            "--executor-memory",
            "512m",
            "--conf",
            "spark.cores.max=2",
            "--",
            "prepare",
            *overrides,
        ],
        cwd=ROOT,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert_same_prepare(emb, compose(overrides))
    logs = stage_dir(compose(overrides), "prepare").parent.parent / "logs"
    # the session the stage used is the one spark-submit configured
    assert any(f"master {cluster.url}" in p.read_text() for p in logs.rglob("*.log"))
    wrong = subprocess.run(
        ["bash", "scripts/spark_submit.sh", "--", "pretrain"],
        cwd=ROOT,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "STAGE must be prepare or text" in wrong.stderr


def test_master_nobody_answers_is_one_line_within_seconds(embedded, tmp_path):
    raw, _ = embedded
    closed = free_port()  # bound then released: nothing listens there
    started = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm4trx.prepare",
            f"paths.output_root={tmp_path}",
            f"dataset.raw_dir={raw}",
            *SMALL,
            "engine=spark",
            f"engine.spark.master=spark://127.0.0.1:{closed}",
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.time() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Spark master answers" in lines[0] and f"127.0.0.1:{closed}" in lines[0], lines
    assert elapsed < 60, elapsed  # the interpreter's imports included; the probe itself fails at once
    # nothing written but the stage's log and lock files
    assert [p for p in tmp_path.rglob("*") if p.is_file() and not {"logs", ".locks"} & set(p.parts)] == []


def test_killed_worker_mid_job_changes_nothing(cluster, embedded, tmp_path):
    """SIGKILL to one worker (and its executor) while its executor runs prepare's tasks: Spark reruns the lost
    tasks on the other worker; the outputs are still the embedded engine's. Run last: it restarts the worker."""
    raw, emb = embedded
    overrides = [
        f"paths.output_root={tmp_path}",
        f"dataset.raw_dir={raw}",
        *SMALL,
        *ON_CLUSTER,
        f"engine.spark.master={cluster.url}",
    ]
    victim = cluster.state / "worker2"
    before = set(victim.glob("app-*"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm4trx.prepare", *overrides],
        cwd=ROOT,
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        # Killed once its executor runs a task of the job (the executor logs each task it starts).
        while not any(
            "Running task" in p.read_text(errors="replace")
            for d in set(victim.glob("app-*")) - before
            for p in d.glob("*/stderr")
        ):
            assert proc.poll() is None, "prepare ended before worker2 ran a task"
            assert time.time() < deadline
            time.sleep(0.1)
        cluster.stop(cluster.workers["worker2"], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert_same_prepare(emb, compose(overrides))
    assert not list(Path(tmp_path).rglob("*.tmp-*"))  # no temporary folder left behind
    cluster.add_worker("worker2")  # the cluster as the fixture made it
    cluster.wait_workers(2)
