#!/usr/bin/env bash
# The test command of the README and of CI: installs the environment if needed, then runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k text -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
