#!/usr/bin/env bash
# Installs everything the tests need, then runs the whole suite (the same command CI runs).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh --test
exec .venv/bin/python -m pytest "$@"
