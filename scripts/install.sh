#!/usr/bin/env bash
# Installs what the project needs into .venv. With --test: test dependencies too, plus
# Debian's Chromium (for the real-browser test) and Node/npm (for the oidc-provider peer).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
LOG=.venv/install.log

pip_install() {  # quiet unless it fails: then show why
  .venv/bin/python -m pip install --quiet "$@" > "$LOG" 2>&1 || { cat "$LOG"; exit 1; }
}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi

if [ "${1:-}" = "--test" ]; then
  pip_install -e ".[test]"
  missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
  fi
else
  pip_install -e .
fi
