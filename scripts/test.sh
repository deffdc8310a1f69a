#!/usr/bin/env bash
# The test suite on a fresh machine: install, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export BUDGETKIT_PHOENIX_PYTHON="$PWD/.venv-phoenix/bin/python"
exec .venv/bin/python -m pytest "$@"
