#!/usr/bin/env bash
# Create ./.venv (Python 3.11+) and install budgetkit with every extra, the test, lint and docs
# tools, and redis-server (for the Redis ledger tests) when it is missing.
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# The Redis ledger tests start their own redis-server (Debian's package); install it if missing.
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
command -v redis-server >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server; }
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.budgetkit-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[all]' --group tests --group lint --group docs
  echo "$want" > "$stamp"
fi
# Arize Phoenix (a real trace backend for the end-to-end test) lives in its own venv: its
# pins would downgrade the provider SDKs the extraction tests use.
if [ ! -x .venv-phoenix/bin/phoenix ]; then
  "$PY" -m venv .venv-phoenix
  .venv-phoenix/bin/python -m pip install -q --upgrade pip
  .venv-phoenix/bin/python -m pip install -q arize-phoenix
fi
