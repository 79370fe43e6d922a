"""The Spark session of `engine=spark` (conf/engine/spark.yaml), and the Java check behind it.

`session(cfg)` returns the active SparkSession when there is one (spark-submit, a notebook, the tests' fixture),
else builds one from `engine.spark`: `master` (null: local[*] unless spark-submit set one), `app_name`, and
`conf` passed to the builder as given. Workers run this same Python (spark.pyspark.python defaults to
sys.executable) and import llm4trx there: on a cluster the package must be installed on the executors (the
same image or venv, or `spark-submit --py-files`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

from omegaconf import DictConfig, OmegaConf

from llm4trx.core.errors import ConfigError

log = logging.getLogger(__name__)

ENGINES = ("embedded", "spark")


def engine_of(cfg: DictConfig) -> str:
    """The configured engine of prepare/text ("embedded" when the config has no engine section)."""
    engine = cfg.get("engine")
    name = "embedded" if engine is None else str(engine.get("name", "embedded") if OmegaConf.is_dict(engine) else engine)
    if name not in ENGINES:
        raise ConfigError(f"engine={name!r} is not one of {list(ENGINES)} (conf/engine/)")
    return name


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
        raise ConfigError("engine=spark needs Java 17 (java on PATH or JAVA_HOME): run scripts/setup.sh, or "
                          "apt-get install openjdk-17-jre-headless")
    spark_cfg = cfg.engine.spark
    builder = SparkSession.builder.appName(str(spark_cfg.get("app_name") or "llm4trx"))
    if spark_cfg.get("master"):
        builder = builder.master(str(spark_cfg.master))
    elif "SPARK_HOME" not in os.environ and not os.environ.get("PYSPARK_SUBMIT_ARGS"):
        builder = builder.master("local[*]")
    conf = flat_conf(OmegaConf.to_container(spark_cfg.get("conf") or {}, resolve=True))
    conf.setdefault("spark.pyspark.python", sys.executable)
    os.environ.setdefault("PYSPARK_PYTHON", conf["spark.pyspark.python"])  # local mode reads the variable
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("spark %s, master %s, default parallelism %d", spark.version, spark.sparkContext.master,
             spark.sparkContext.defaultParallelism)
    return spark
