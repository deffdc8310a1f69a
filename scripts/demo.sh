#!/usr/bin/env bash
# The main job on a fresh machine: install, then run the demo agent under a budget that trips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh demo
exec .venv/bin/budgetkit demo "$@"
