#!/usr/bin/env bash
# The test suite on a fresh machine: install, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
