#!/usr/bin/env bash
# Installs what the project needs into .venv. With --test: test dependencies too, plus
# Debian's Chromium (for the real-browser test), Node/npm (for the oidc-provider peer),
# Glewlwyd (a second real authorization server, tests/test_interop_glewlwyd.py) and Apache with
# mod_auth_openidc (a certified OpenID relying party, tests/test_oidc_apache.py).
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
  # Glewlwyd's package would set up a system-wide database (dbconfig) and service; the tests
  # build their own in a temporary folder, so it is installed unconfigured ("No configuration"
  # and dbconfig-no-thanks): its postinst then only writes a sample /etc/glewlwyd/glewlwyd.conf
  # and tries to start the service, which may fail harmlessly (`|| true`; containers deny it).
  glewlwyd=false
  command -v glewlwyd >/dev/null 2>&1 || { glewlwyd=true; missing+=(glewlwyd dbconfig-no-thanks); }
  # Apache: the test starts its own apache2 on a free loopback port with a configuration of its
  # own; the package's system-wide service (port 80) must not run, so the install starts no
  # service (a policy-rc.d that denies every start, only while apt runs) and disables it.
  apache=false
  [ -e /usr/lib/apache2/modules/mod_auth_openidc.so ] || {
    apache=true
    missing+=(apache2 libapache2-mod-auth-openidc)
  }
  if [ "${#missing[@]}" -gt 0 ]; then
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo)
    if $glewlwyd; then
      echo "glewlwyd glewlwyd/config_type select No configuration" | "${as_root[@]}" debconf-set-selections
    fi
    "${as_root[@]}" apt-get update -qq
    deny_starts=false
    if $apache && [ ! -e /usr/sbin/policy-rc.d ]; then
      deny_starts=true
      printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee /usr/sbin/policy-rc.d >/dev/null
      "${as_root[@]}" chmod 755 /usr/sbin/policy-rc.d
    fi
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || { ! $deny_starts || "${as_root[@]}" rm -f /usr/sbin/policy-rc.d; exit 1; }
    ! $deny_starts || "${as_root[@]}" rm -f /usr/sbin/policy-rc.d
    if $apache; then  # no system-wide Apache left running or starting at boot
      if [ -d /run/systemd/system ]; then
        "${as_root[@]}" systemctl disable --now apache2.service >/dev/null 2>&1 || true
      else
        "${as_root[@]}" apache2ctl stop >/dev/null 2>&1 || true
        "${as_root[@]}" update-rc.d apache2 disable >/dev/null 2>&1 || true
      fi
    fi
    if $glewlwyd && [ -d /run/systemd/system ]; then  # no system-wide Glewlwyd left running
      "${as_root[@]}" systemctl disable --now glewlwyd.service >/dev/null 2>&1 || true
    fi
  fi
else
  pip_install -e .
fi
