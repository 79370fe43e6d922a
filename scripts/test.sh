#!/usr/bin/env bash
# The test command of the README and of CI: installs the environment if needed, then runs pytest in
# TEST_WORKERS pytest-xdist workers (default 3; 0 runs in this process). Tests that share a fixture or an
# xdist_group run on one worker (tests/conftest.py); the 15 slowest are listed at the end.
# Three workers on two cores: much of the suite waits rather than computes (SLURM's scheduler, JVMs and launchers
# starting, polling loops); even with 3 workers it used 1.5 of the 2 cores on average. Measured on the 2-core
# machine, the same clone: 668 s with 2 workers, 609 s with 3 (another clone: 627 s with 3, 668 s with 4).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k text -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One CPU thread per worker's processes unless set (as run_multi_seed.sh does for parallel seeds): two workers
# each starting stages with all cores' OpenMP threads spin against each other (pretraining a tiny model: 16 s
# with 1 thread vs 23 s with 2 beside another worker).
workers=${TEST_WORKERS:-3}
cores=$(nproc)
(( workers > 0 )) && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores > workers ? cores / workers : 1 ))}
exec .venv/bin/python -m pytest -n "$workers" --dist loadgroup --durations=15 "$@"
