"""The official MCP conformance suite (npm @modelcontextprotocol/conformance, pinned in
tests/conformance/package.json) against our client and provider.

* Every client authorization scenario of the 2026-07-28 revision runs against client.py, each
  with the suite's own MCP server and authorization server; the suite's verdict is asserted
  per scenario. The suite runs `<command> <server-url>`; tests/conformance/client_command.py
  turns that into client.py's flags, and tests/conformance/browser.py plays the browser.
* The suite's authorization-server scenarios run against oauth_provider.py, the test playing
  the person who signs in on the provider's pages.

The suite needs Node.js >= 22; the pinned `node` package brings it, so only npm is needed on
PATH (the package is installed once, from the committed lockfile, into node_modules there).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from mcp_oauth.client.headless import authorize_with_password
from tests.conftest import start_provider
from tests.support import ROOT, free_port, install_pinned_npm_package

SUITE = ROOT / "tests" / "conformance"
SPEC = "2026-07-28"
PACKAGE = "@modelcontextprotocol/conformance"
CLIENT_COMMAND = f"{sys.executable} {SUITE / 'client_command.py'}"

# `conformance list --client --spec-version 2026-07-28`, its auth/ scenarios, at the pin:
# test_the_scenario_list_is_the_suites_own fails when a new pin adds or drops one.
CLIENT_AUTH_SCENARIOS = [
    "auth/metadata-default",
    "auth/metadata-var1",
    "auth/metadata-var2",
    "auth/metadata-var3",
    "auth/basic-cimd",
    "auth/scope-from-www-authenticate",
    "auth/scope-from-scopes-supported",
    "auth/scope-omitted-when-undefined",
    "auth/scope-step-up",
    "auth/scope-retry-limit",
    "auth/token-endpoint-auth-basic",
    "auth/token-endpoint-auth-post",
    "auth/token-endpoint-auth-none",
    "auth/pre-registration",
    "auth/resource-mismatch",
    "auth/offline-access-scope",
    "auth/offline-access-not-supported",
    "auth/authorization-server-migration",
    "auth/iss-supported",
    "auth/iss-not-advertised",
    "auth/iss-supported-missing",
    "auth/iss-wrong-issuer",
    "auth/iss-unexpected",
    "auth/iss-normalized",
    "auth/metadata-issuer-mismatch",
]


@pytest.fixture(scope="session")
def suite_env() -> dict[str, str]:
    """The environment to run the suite in: the pinned package installed, its node first."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not on PATH: the MCP conformance suite is an npm package")
    install_pinned_npm_package(SUITE, PACKAGE)
    path = f"{SUITE / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path}


def conformance(env: dict[str, str], *args: str, timeout: float = 300):
    return subprocess.run(
        [str(SUITE / "node_modules" / ".bin" / "conformance"), *args],
        cwd=SUITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def verdicts(results: Path) -> list[dict]:
    """Every check of the run: the suite writes checks.json under the output directory."""
    files = results.rglob("checks.json")
    return [check for path in files for check in json.loads(path.read_text())]


def not_passed(checks: list[dict]) -> list[str]:
    return [
        f"{check['id']}: {check['status']} {check.get('description', '')} "
        f"{check.get('errorMessage') or ''}".strip()
        for check in checks
        if check["status"] in ("FAILURE", "WARNING")
    ]


# --- client.py against the suite's servers ----------------------------------------------------


def test_the_scenario_list_is_the_suites_own(suite_env):
    listed = conformance(suite_env, "list", "--client", "--spec-version", SPEC)
    assert listed.returncode == 0, listed.stderr
    assert re.findall(r"^\s*- (auth/\S+)", listed.stdout, re.M) == CLIENT_AUTH_SCENARIOS


@pytest.mark.parametrize("scenario", CLIENT_AUTH_SCENARIOS)
def test_client_passes_the_conformance_scenario(scenario, suite_env, tmp_path):
    run = conformance(
        suite_env,
        "client",
        "--command",
        CLIENT_COMMAND,
        "--scenario",
        scenario,
        "--spec-version",
        SPEC,
        "--output-dir",
        str(tmp_path),
    )
    checks = verdicts(tmp_path)
    assert checks, f"the suite recorded no checks:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    assert not not_passed(checks), "\n".join(not_passed(checks)) + "\n" + run.stdout[-4000:]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


# --- oauth_provider.py against the suite's authorization-server scenarios ----------------------


def test_provider_passes_the_authorization_server_scenarios(suite_env, tmp_path):
    """The suite signs in as the public pre-registered client `mcp-client` (its loopback
    redirect URI takes any port) and waits for a person to finish in a browser: the test
    reads the URL it prints and walks the provider's login and consent pages as alice."""
    resource = "http://127.0.0.1:8000/mcp"
    provider = start_provider(tmp_path, resource=resource)
    try:
        callback_port = free_port()
        process = subprocess.Popen(
            [
                str(SUITE / "node_modules" / ".bin" / "conformance"),
                "authorization",
                "--url",
                provider.url,
                "--client-id",
                "mcp-client",
                "--resource",
                resource,
                "--port",
                str(callback_port),
                "--spec-version",
                SPEC,
                "--output-dir",
                str(tmp_path / "results"),
            ],
            cwd=SUITE,
            env=suite_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seen: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if line.startswith(f"{provider.url}/authorize?"):
                asyncio.run(sign_in_as_a_person(line.strip()))
                break
        output = "".join(seen) + process.communicate(timeout=120)[0]
    finally:
        provider.process.stop()
    checks = verdicts(tmp_path / "results")
    assert checks, output
    failed = not_passed(checks)  # stricter than the suite's verdict: a warning fails too
    assert not failed, "\n".join(failed) + "\n" + output
    assert process.returncode == 0, output


async def sign_in_as_a_person(url: str) -> None:
    """alice signs in and approves; her browser follows the redirect to the suite's callback."""
    async with httpx2.AsyncClient(timeout=30) as browser:
        callback = await authorize_with_password(browser, url, "alice", "password123")
        await browser.get(callback)
