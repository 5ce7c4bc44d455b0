#!/usr/bin/env bash
# The test suite; pass pytest options through (e.g. -k scan, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q "$@"
