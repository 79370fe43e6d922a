#!/usr/bin/env bash
# Creates .venv with the pinned stack, idempotently: a second call with unchanged requirements returns at once.
# Every README command calls this first. uv installs the ~210 exact pins in about a minute (pip: 4-8 min).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.llm4trx-installed
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)

if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
  echo "setup.sh: need Python 3.10-3.12 (the pinned torch 2.7.0 has no wheels beyond); set PYTHON=/path/to/python" >&2
  exit 1
fi

[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check uv==0.13.8
echo "setup.sh: installing pinned requirements into $VENV (first time: a few minutes, ~7 GB)" >&2
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" -r requirements.txt
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --no-deps -e .
# Byte-compile the environment once where PYTHONDONTWRITEBYTECODE is set: every process would otherwise
# recompile torch/transformers/llm-foundry from source (import ~2x slower). Without it Python caches each module's
# bytecode the first time it is imported, which costs less than compiling everything here (.ci/run unsets it).
# Skipped: the optional cloud-store, logger and ONNX clients that composer/llm-foundry pull in and no stage
# imports by default (oci alone is 17,926 of the 36,289 files; no test read one of their .pyc files): 47 s -> 26 s
# on 2 cores. A run that does import one (e.g. loggers=wandb) compiles it on import, as without this step.
if [[ -n "${PYTHONDONTWRITEBYTECODE:-}" ]]; then
  "$VENV/bin/python" -m compileall -q -j 0 \
    -x '/tests?/|/site-packages/(oci|azure|libcloud|wandb|onnx|onnxruntime|sentry_sdk|slack_sdk|sqlalchemy|pyasn1_modules)/' \
    "$VENV/lib" >/dev/null 2>&1 || true
fi
# engine=spark (conf/engine/spark.yaml) runs on a JVM: install a headless JRE where `java` is missing and apt
# can be used (root); otherwise say how. Nothing else needs Java.
if ! command -v java >/dev/null && [[ -z "${JAVA_HOME:-}" ]]; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; } >/dev/null 2>&1 ||
      echo "setup.sh: could not install openjdk-17-jre-headless; engine=spark needs Java 17" >&2
  else
    echo "setup.sh: no java found; engine=spark needs Java 17 (apt-get install openjdk-17-jre-headless, or set JAVA_HOME)" >&2
  fi
fi
echo "$want" > "$STAMP"
echo "setup.sh: environment ready ($VENV)" >&2
