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

run_stage() {  # run_stage STAGE OVERRIDES...: one stage, with NPROC processes where the stage can use them
  local stage=$1
  shift
  if (( NPROC > 1 )) && [[ $stage == pretrain ]]; then
    .venv/bin/composer -n "$NPROC" -m llm4trx.pretrain "$@"
  elif (( NPROC > 1 )) && [[ $stage == embed ]]; then
    # --multi_gpu also on a GPU-less machine: `--cpu --num_processes N` silently runs one process.
    .venv/bin/accelerate launch --multi_gpu --num_processes "$NPROC" --num_machines 1 --mixed_precision no \
      --dynamo_backend no -m llm4trx.embed "$@"
  else
    $py -m "llm4trx.$stage" "$@"
  fi
}

read -ra stages <<<"$STAGES"
started=$SECONDS
timings=()
echo "run.sh [seed $SEED]: ${#stages[@]} stages into $RUN_DIR (each stage prints its log file; progress=false hides bars)"
for i in "${!stages[@]}"; do
  stage=${stages[i]}
  label="run.sh [seed $SEED] $((i + 1))/${#stages[@]} $stage"
  if [[ " $UP_TO_DATE " == *" $stage "* ]]; then
    echo "$label: up to date, skipped"
    timings+=("$stage skipped")
    continue
  fi
  t0=$SECONDS
  # The stage prints its own start line (with its log file) and end line (time and its main figure).
  LLM4TRX_STAGE_LABEL=$label run_stage "$stage" "$@" || {
    rc=$?
    echo "run.sh: stage $stage failed (exit $rc); fix the cause and rerun the same command to continue from it" >&2
    exit "$rc"
  }
  timings+=("$stage $((SECONDS - t0))s")
done
echo "run.sh [seed $SEED]: finished in $((SECONDS - started)) s ($(IFS=,; echo "${timings[*]}" | sed 's/,/, /g'))"
if [[ " $STAGES " == *" validate "* ]]; then echo "run.sh [seed $SEED]: results in $RUN_DIR/validation/results.md"; fi
