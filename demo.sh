#!/usr/bin/env bash
# Installs the project into .venv, then runs the demo: starts the provider (:9000) and the
# resource server (:8000) unless they are already running, signs in as alice, bob and admin,
# prints who may call which tool, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh
exec .venv/bin/python client.py --demo "$@"
