#!/usr/bin/env bash
# The test command of the README and of CI: installs the environment if needed, then runs pytest in
# TEST_WORKERS pytest-xdist workers (default 2; 0 runs in this process). Tests that share a fixture or an
# xdist_group run on one worker (tests/conftest.py); the 15 slowest are listed at the end.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k text -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadgroup --durations=15 "$@"
