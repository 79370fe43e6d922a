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
# stages (prepare, text, tokenizer, shards) are built by the first seed and reused by the others.
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

settings=$($py -m llm4trx.check --shell "$@")
eval "$settings"

started=$SECONDS
read -ra seeds <<<"$SEEDS"
for i in "${!seeds[@]}"; do
  echo "=== run_multi_seed.sh: seed ${seeds[i]} ($((i + 1))/${#seeds[@]})"
  bash scripts/run.sh "$@" "seed=${seeds[i]}"
done
$py -m llm4trx.report "$@"
echo "run_multi_seed.sh: ${#seeds[@]} seeds in $((SECONDS - started)) s"
echo "report: $REPORT_DIR/report.md (tables; plots: $REPORT_DIR/*.png; numbers: $REPORT_DIR/report.json)"
