#!/usr/bin/env bash
# prepare or text through spark-submit, the cluster's own launcher (standalone, YARN, Kubernetes):
#   bash scripts/spark_submit.sh [spark-submit options...] -- STAGE [hydra overrides...]
#   bash scripts/spark_submit.sh --master spark://head:7077 --executor-memory 8g -- prepare dataset=age_pred
#   bash scripts/spark_submit.sh --master yarn --num-executors 16 -- text dataset=age_pred
# The driver runs here (client mode: the stage writes its folder from the driver); engine=spark is added and
# engine.spark.master stays null, so spark-submit's --master and --conf apply. Executors run PYSPARK_PYTHON
# (default this checkout's .venv) and import llm4trx from this checkout's source/ (PYTHONPATH): on a real
# cluster that path and the run directory must be on a filesystem every node sees.
set -euo pipefail
cd "$(dirname "$0")/.."
options=()
if [[ " $* " == *" -- "* ]]; then
  while [[ $1 != -- ]]; do options+=("$1"); shift; done
  shift
fi
stage=${1:-}
[[ $stage == prepare || $stage == text ]] || {
  echo "spark_submit.sh: STAGE must be prepare or text (the stages with engine=spark), not '${stage}';" \
    "usage: bash scripts/spark_submit.sh [spark-submit options...] -- STAGE [overrides...]" >&2
  exit 2
}
shift
engine=(engine=spark)
for arg in "$@"; do [[ $arg == engine=* ]] && engine=(); done  # the user's own engine=... (must be spark)
py=${PYSPARK_PYTHON:-$PWD/.venv/bin/python}
export PYSPARK_PYTHON=$py PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$py}
export PYTHONPATH=$PWD/source${PYTHONPATH:+:$PYTHONPATH}
# pyspark's wheel is a whole Spark distribution (bin/spark-submit, jars/); a SPARK_HOME of the cluster wins.
export SPARK_HOME=${SPARK_HOME:-$("$py" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}
# Validate the overrides before anything is submitted (one line, exit 2).
"$py" -m llm4trx.core.check "${engine[@]}" "$@" >/dev/null
exec "$SPARK_HOME/bin/spark-submit" --deploy-mode client --name "llm4trx-$stage" \
  --conf "spark.executorEnv.PYTHONPATH=$PYTHONPATH" "${options[@]}" scripts/spark_entry.py "$stage" "${engine[@]}" "$@"
