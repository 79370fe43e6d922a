#!/usr/bin/env bash
# The whole pipeline for one seed:
#   [download, for a real dataset whose raw files are missing] → prepare → augment (when an augment config is chosen) → text → tokenizer → shards → pretrain → export → embed → validate
#
#   bash scripts/run.sh                                        # the default experiment (smoke: CPU, synthetic data)
#   bash scripts/run.sh experiment=smoke seed=3 trainer.max_duration=200ba
#
# Every argument is a Hydra override given to every stage; they are validated once before anything runs.
# Stages whose _SUCCESS.json matches the config are skipped without starting them; unfinished or changed ones
# are (re)built, so rerunning a failed or interrupted command continues where it stopped.
# Environment:
#   NPROC=N           processes for pretraining (composer -n N) and embedding (accelerate launch); default:
#                     every visible GPU, 1 without a GPU
#   STAGES="a b ..."  run only these stages (in pipeline order); the stages before them must have finished
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Run the code of this checkout, whichever checkout the environment was installed from.
export PYTHONPATH=$PWD/source${PYTHONPATH:+:$PYTHONPATH}
py=.venv/bin/python

# Validates the arguments (one line and exit 2 on error); sets RUN_DIR SEED NPROC STAGES UP_TO_DATE ...
settings=$($py -m llm4trx.core.check --shell "$@")
eval "$settings"

# The stages in order, each its own process: forked on Linux from one that keeps the libraries imported by
# the stages before (llm4trx/core/stage_runner.py says why), or started afresh (NPROC > 1 launchers, LLM4TRX_FORK=0).
exec $py -m llm4trx.core.stage_runner --seed "$SEED" --run-dir "$RUN_DIR" --stages "$STAGES" \
  --up-to-date "$UP_TO_DATE" --nproc "$NPROC" -- "$@"
