#!/usr/bin/env bash
# Create ./.venv (Python 3.11+) and install budgetkit from this checkout.
#   bootstrap.sh demo   the package and its [demo] extra only: what the demo runs on
#   bootstrap.sh test   every extra, the test, lint and docs tools, and Arize Phoenix (in its own
#                       venv) for the end-to-end trace test; what CI runs on (the default)
# Re-running is cheap: each mode reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-test}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.budgetkit-$mode"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
case "$mode" in
  demo)
    .venv/bin/python -m pip install -q -e '.[demo]'
    ;;
  test)
    .venv/bin/python -m pip install -q --upgrade pip  # dependency groups need pip >= 25.1
    .venv/bin/python -m pip install -q -e '.[all]' --group tests --group lint --group docs
    # Arize Phoenix (a real trace backend for the end-to-end test) lives in its own venv: its
    # pins would downgrade the provider SDKs the extraction tests use.
    if [ ! -x .venv-phoenix/bin/phoenix ]; then
      "$PY" -m venv .venv-phoenix
      .venv-phoenix/bin/python -m pip install -q --upgrade pip
      .venv-phoenix/bin/python -m pip install -q arize-phoenix
    fi
    ;;
  *)
    echo "usage: bootstrap.sh [demo|test]" >&2
    exit 2
    ;;
esac
echo "$want" > "$stamp"
