"""The Spark session of `engine=spark` (conf/engine/spark.yaml), and the Java check behind it.

`session(cfg)` returns the active SparkSession when there is one (spark-submit, a notebook, the tests' fixture),
else builds one from `engine.spark`: `master` (null: local[*] unless spark-submit set one), `app_name`, and
`conf` passed to the builder as given. Workers run this same Python (spark.pyspark.python defaults to
sys.executable) and import llm4trx there: on a cluster the package must be installed on the executors (the
same image or venv, or `spark-submit --py-files`).

A `spark://host:port[,host2:port2]` master is probed over TCP before the session is built: Spark's own client
retries a master that does not answer for minutes (3 registrations x 20 s, then a context that may never
return), so a wrong URL or a master that is not up is one line within `connect_timeout` seconds instead.
A driver talking to a master on the loopback address binds the loopback too (spark.driver.host), else it
advertises the machine's external interface, which the master's workers on 127.0.0.1 may not reach.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time

from omegaconf import DictConfig, OmegaConf

from llm4trx.core.errors import ConfigError

log = logging.getLogger(__name__)


def engine_of(cfg: DictConfig) -> str:
    """The configured engine of prepare/text ("embedded" when the config has no engine section)."""
    engine = cfg.get("engine")
    name = (
        "embedded" if engine is None else str(engine.get("name", "embedded") if OmegaConf.is_dict(engine) else engine)
    )
    return name  # one of ENGINES: core/schema.py


def java_available() -> bool:
    home = os.environ.get("JAVA_HOME")
    return bool((home and os.path.exists(os.path.join(home, "bin", "java"))) or shutil.which("java"))


def flat_conf(tree: dict, prefix: str = "") -> dict[str, str]:
    """Spark keys from `engine.spark.conf`: written flat in YAML ("spark.sql.shuffle.partitions": 8) or nested,
    as a command-line override makes them (engine.spark.conf.spark.sql.shuffle.partitions=8)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_conf(value, name + "."))
        else:
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def standalone_masters(master: str) -> list[tuple[str, int]]:
    """(host, port) of each master of a `spark://h1:p1,h2:p2` URL (standalone with ZooKeeper HA lists several);
    [] for any other master (local[*], yarn, k8s://...)."""
    if not master.startswith("spark://"):
        return []
    out = []
    for part in master[len("spark://") :].split(","):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"engine.spark.master={master}: {part!r} is not host:port (e.g. spark://head:7077)")
        out.append((host.strip("[]"), int(port)))
    return out


def probe_master(master: str, timeout: float) -> None:
    """Raise one ConfigError line unless some master of a spark:// URL accepts a TCP connection within `timeout`
    seconds in all (a closed port fails at once; a dropped SYN, e.g. a firewall, after the timeout)."""
    masters = standalone_masters(master)
    if not masters:
        return
    deadline = time.monotonic() + timeout
    reasons = []
    for host, port in masters:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())):
                return
        except OSError as err:
            reasons.append(f"{host}:{port}: {err.strerror or err or type(err).__name__}")
    raise ConfigError(
        f"engine.spark.master={master}: no Spark master answers ({'; '.join(reasons)}; tried for at most "
        f"{timeout:g} s): start it ($SPARK_HOME/sbin/start-master.sh, scripts/slurm/spark_stages.sbatch) "
        "or fix the URL"
    )


def session(cfg: DictConfig):
    """The SparkSession for `cfg.engine.spark` (the active one if any)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:  # pragma: no cover - pyspark is pinned in requirements.txt
        raise ConfigError("engine=spark needs pyspark (pip install -r requirements.txt)") from None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if not java_available():
        raise ConfigError(
            "engine=spark needs Java 17 (java on PATH or JAVA_HOME): run scripts/setup.sh, or "
            "apt-get install openjdk-17-jre-headless"
        )
    spark_cfg = cfg.engine.spark
    master = str(spark_cfg.get("master") or "")
    timeout = float(spark_cfg.get("connect_timeout") or 10)
    if not master and os.environ.get("PYSPARK_GATEWAY_PORT"):  # under spark-submit: probe its --master
        from pyspark import SparkConf, SparkContext

        SparkContext._ensure_initialized()
        probe_master(SparkConf().get("spark.master", ""), timeout)
    probe_master(master, timeout)
    builder = SparkSession.builder.appName(str(spark_cfg.get("app_name") or "llm4trx"))
    if master:
        builder = builder.master(master)
    elif "SPARK_HOME" not in os.environ and not os.environ.get("PYSPARK_SUBMIT_ARGS"):
        builder = builder.master("local[*]")
    conf = flat_conf(OmegaConf.to_container(spark_cfg.get("conf") or {}, resolve=True))
    conf.setdefault("spark.pyspark.python", sys.executable)
    if any(host in LOOPBACK for host, _ in standalone_masters(master)):
        conf.setdefault("spark.driver.host", "127.0.0.1")
        conf.setdefault("spark.driver.bindAddress", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", conf["spark.pyspark.python"])  # local mode reads the variable
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info(
        "spark %s, master %s, default parallelism %d",
        spark.version,
        spark.sparkContext.master,
        spark.sparkContext.defaultParallelism,
    )
    return spark
