#!/usr/bin/env bash
# The test command of the README and of CI: installs the environment if needed, then runs pytest in
# TEST_WORKERS pytest-xdist workers (default 2; 0 runs in this process). Tests that share a fixture or an
# xdist_group run on one worker (tests/conftest.py); the 15 slowest are listed at the end.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k text -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One CPU thread per worker's processes unless set (as run_multi_seed.sh does for parallel seeds): two workers
# each starting stages with all cores' OpenMP threads spin against each other (pretraining a tiny model: 16 s
# with 1 thread vs 23 s with 2 beside another worker).
workers=${TEST_WORKERS:-2}
cores=$(nproc)
(( workers > 0 )) && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores > workers ? cores / workers : 1 ))}
exec .venv/bin/python -m pytest -n "$workers" --dist loadgroup --durations=15 "$@"
