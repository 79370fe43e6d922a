#!/usr/bin/env bash
# The pipeline over several seeds, then the multi-seed report.
#
#   bash scripts/run_multi_seed.sh                              # the default experiment (smoke), its 3 seeds, CPU
#   bash scripts/run_multi_seed.sh experiment=smoke seeds=[1,2,3]
#   SEEDS="1 2 3" bash scripts/run_multi_seed.sh experiment=smoke
#
# Seeds: the config key `seeds` (default 12 21 42 228 1337; experiment presets may set their own), overridden
# by `seeds=[...]` or by the SEEDS environment variable (space-separated). Other arguments are Hydra overrides
# given to every stage of every seed (see scripts/run.sh; NPROC and STAGES apply too). The seed-independent
# stages (prepare, text, tokenizer, shards, baselines) are built by the first seed and reused by the others.
# `parallel_seeds=N` (config; the smoke preset sets 3) runs N seeds at once after building those stages once
# (with every core), each seed with cores/N CPU threads (OMP_NUM_THREADS unless already set) and no progress
# bars; a failed seed fails the command after the others finish (rerun it to continue from where each stopped).
# (Building baselines beside the seeds instead, as one more job, was not faster on 2 cores: 435 and 448 s against
# 425 and 445 s for the default run, docs/results.md#the-default-run.)
# Ends by printing where the report is: <paths.experiment_dir>/report/report.md (+ report.json, *.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ -n ${SEEDS:-} ]]; then
  seeds_list=$(echo $SEEDS | tr ' ' ',')  # unquoted on purpose: collapses runs of spaces
  set -- "$@" "seeds=[$seeds_list]"
fi
export PYTHONPATH=$PWD/source${PYTHONPATH:+:$PYTHONPATH}
py=.venv/bin/python

settings=$($py -m llm4trx.core.check --shell "$@")
eval "$settings"

started=$SECONDS
read -ra seeds <<<"$SEEDS"
if (( PARALLEL_SEEDS > 1 && ${#seeds[@]} > 1 )); then
  echo "=== run_multi_seed.sh: seed-independent stages ($SHARED_STAGES), then ${#seeds[@]} seeds, $PARALLEL_SEEDS at once"
  # The shared stages once (only when one must be built) with the caller's threads, then the seeds, PARALLEL_SEEDS
  # at a time with cores/PARALLEL_SEEDS threads each, every seed as `run.sh <overrides> seed=S progress=false`:
  # forked from one process that imports the stages' libraries once (llm4trx/core/seeds_runner.py says why).
  cores=$(nproc)
  seed_threads=${OMP_NUM_THREADS:-$(( cores > PARALLEL_SEEDS ? cores / PARALLEL_SEEDS : 1 ))}
  OMP_NUM_THREADS=$seed_threads $py -m llm4trx.core.seeds_runner --seeds "$SEEDS" --parallel "$PARALLEL_SEEDS" \
    --shared "${SHARED_PENDING:+$SHARED_STAGES}" --shared-threads "${OMP_NUM_THREADS:-}" -- "$@"
else
  for i in "${!seeds[@]}"; do
    echo "=== run_multi_seed.sh: seed ${seeds[i]} ($((i + 1))/${#seeds[@]})"
    bash scripts/run.sh "$@" "seed=${seeds[i]}"
  done
fi
if [[ " $STAGES " != *" validate "* ]]; then  # STAGES stopped before validation: nothing to report
  echo "run_multi_seed.sh: ${#seeds[@]} seeds in $((SECONDS - started)) s (stages: $STAGES; no report without validate)"
  exit 0
fi
$py -m llm4trx.report "$@"
echo "run_multi_seed.sh: ${#seeds[@]} seeds in $((SECONDS - started)) s"
echo "report: $REPORT_DIR/report.md (tables; plots: $REPORT_DIR/*.png; numbers: $REPORT_DIR/report.json)"
