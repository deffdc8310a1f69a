#!/usr/bin/env bash
# Create ./.venv (Python 3.11+) and install budgetkit with every extra and the test, lint and
# docs tools.
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
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
