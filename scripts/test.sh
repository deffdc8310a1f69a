#!/usr/bin/env bash
# The test suite on a fresh machine: install, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
# The Redis ledger tests start their own redis-server (Debian's package); install it if missing.
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
command -v redis-server >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server; }
export BUDGETKIT_PHOENIX_PYTHON="$PWD/.venv-phoenix/bin/python"
exec .venv/bin/python -m pytest "$@"
