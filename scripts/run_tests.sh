#!/usr/bin/env bash
# The test suite in two processes (pytest-xdist); pass pytest options through (e.g. -k scan, -m "not slow",
# -n 0 for one process).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -n 2 "$@"
