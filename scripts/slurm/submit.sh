#!/usr/bin/env bash
# Submits one of the sbatch scripts and waits for the job; the exit status is the job's (0 only if it succeeded).
#   bash scripts/slurm/submit.sh JOB.sbatch [hydra overrides...]
#   bash scripts/slurm/submit.sh JOB.sbatch [sbatch options...] -- [hydra overrides...]
#   e.g. bash scripts/slurm/submit.sh scripts/slurm/pipeline.sbatch -p gpu -A myproj -- experiment=smoke seeds=[1,2]
# The overrides are validated here before anything is queued. Job log: $LLM4TRX_SLURM_LOGS/slurm-<job id>.out
# (default outputs/slurm/), printed when the job is submitted and its tail shown if it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
job=${1:?usage: bash scripts/slurm/submit.sh JOB.sbatch [sbatch options... --] [hydra overrides...]}
shift
[[ -f $job ]] || { echo "submit.sh: no such job script: $job (see scripts/slurm/*.sbatch)" >&2; exit 2; }
options=()
if [[ " $* " == *" -- "* ]]; then
  while [[ $1 != -- ]]; do options+=("$1"); shift; done
  shift
fi
command -v sbatch >/dev/null || {
  echo "submit.sh: SLURM is not available on this machine (no sbatch on PATH); run the pipeline here instead: bash scripts/run_multi_seed.sh $*" >&2
  exit 2
}
bash scripts/setup.sh
PYTHONPATH=$PWD/source${PYTHONPATH:+:$PYTHONPATH} .venv/bin/python -m llm4trx.core.check "$@" >/dev/null

logs=${LLM4TRX_SLURM_LOGS:-outputs/slurm}
mkdir -p "$logs"
idfile=$(mktemp)
trap 'rm -f "$idfile"' EXIT
rc=0
sbatch --wait --parsable --chdir="$PWD" --output="$logs/slurm-%j.out" "${options[@]}" "$job" "$@" |
  while read -r id; do echo "submit.sh: job $id queued; log: $logs/slurm-$id.out (waiting for it to end)"; echo "$id" >"$idfile"; done ||
  rc=$?
id=$(cat "$idfile")
if (( rc != 0 )); then
  [[ -f $logs/slurm-$id.out ]] && tail -n 15 "$logs/slurm-$id.out" >&2
  echo "submit.sh: job $id failed (exit $rc); log: $logs/slurm-$id.out" >&2
  exit "$rc"
fi
echo "submit.sh: job $id finished; log: $logs/slurm-$id.out"
