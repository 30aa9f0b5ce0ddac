"""Interop: the official MCP clients, unmodified, against the provider and the resource server.

* the MCP TypeScript client, npm `@modelcontextprotocol/client` (v2), pinned in
  tests/mcp_clients/package.json and installed from its lockfile;
* the MCP Python SDK's own `mcp.client.auth.OAuthClientProvider` with its streamable HTTP
  client (the `mcp` package this project already depends on).

Each runs as a host application would (tests/mcp_clients/*_driver.*: storage, a loopback
redirect URI, "open the browser at this URL"); the OAuth work is the SDK's own. The person is
played by real Chromium on the provider's real sign-in and consent pages. Each client shows
dynamic registration, sign-in with `resource` (the token's audience checked by introspection),
a read tool call, alice's step-up from `read` to `read write`, bob's `write_data` refused with
a bounded number of sign-ins, and a call after the access token expired that refreshes without
one. Counts are of authorization requests the client made and Chromium followed.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import RS_SECRET, start_provider, start_resource_server
from tests.support import ROOT, free_port, install_pinned_npm_package

CLIENTS = ROOT / "tests" / "mcp_clients"
PACKAGE = "@modelcontextprotocol/client"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORDS = {"alice": "password123", "bob": "secret456"}
ACCESS_TOKEN_TTL = 5  # seconds: short, so that a test can outlive a token
EVENT_WAIT = 120  # seconds for one command: sign-ins in Chromium included


@pytest.fixture(scope="session")
def typescript_client() -> list[str]:
    """The command that runs the TypeScript host: the pinned package installed first."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm/node are not on PATH: the MCP TypeScript client is an npm package")
    engines = json.loads((CLIENTS / "package-lock.json").read_text())["packages"]
    needed = int(re.search(r"\d+", engines[f"node_modules/{PACKAGE}"]["engines"]["node"])[0])
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    assert int(version.strip().lstrip("v").split(".")[0]) >= needed, (
        f"{PACKAGE} needs Node.js >= {needed}; `node --version` says {version.strip()}"
    )
    install_pinned_npm_package(CLIENTS, PACKAGE)
    return [node, str(CLIENTS / "typescript_driver.mjs")]


@pytest.fixture(params=["typescript", "python"])
def client_name(request) -> str:
    return request.param


@pytest.fixture
def client_command(request, client_name) -> list[str]:
    if client_name == "typescript":
        return request.getfixturevalue("typescript_client")
    return [sys.executable, str(CLIENTS / "python_driver.py")]


def start_pair(tmp: Path, *provider_args: str) -> tuple[str, str, list]:
    """(issuer, MCP URL, processes): the provider and the resource server that trusts it."""
    rs_port = free_port()
    mcp_url = f"http://127.0.0.1:{rs_port}/mcp"
    provider = start_provider(tmp, args=list(provider_args), resource=mcp_url)
    rs = start_resource_server(
        tmp, rs_port, {"OAUTH_PROVIDER_URL": provider.url, "MCP_RS_CLIENT_SECRET": RS_SECRET}
    )
    return provider.url, mcp_url, [rs, provider.process]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """The pair with its default token lifetimes: no refresh in the middle of a test."""
    issuer, mcp_url, processes = start_pair(tmp_path_factory.mktemp("interop-mcp-clients"))
    yield issuer, mcp_url
    for process in processes:
        process.stop()


@pytest.fixture(scope="module")
def short_lived_pair(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """The pair with access tokens that expire after ACCESS_TOKEN_TTL seconds."""
    tmp = tmp_path_factory.mktemp("interop-mcp-clients-short")
    issuer, mcp_url, processes = start_pair(tmp, "--access-token-ttl", str(ACCESS_TOKEN_TTL))
    yield issuer, mcp_url
    for process in processes:
        process.stop()


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A person's browser: one Chromium page, its cookies kept between sign-ins."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


class Host:
    """A host application built on one of the official clients, and the person at its browser:
    every authorization URL the client hands over is opened in Chromium, where `account` signs
    in (if the provider asks) and approves (denies, if the page offers nothing to allow)."""

    def __init__(self, command: list[str], mcp_url: str, page: Any, log: Path):
        self.page = page
        self.account = "alice"
        self.events: list[dict] = []
        self.consent_pages: list[str] = []
        self.log = log
        self.process = subprocess.Popen(
            [*command, mcp_url],
            cwd=CLIENTS,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self.read_lines, daemon=True).start()

    def read_lines(self) -> None:
        """Each line with the time it arrived: no earlier than the client wrote it."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put((time.time(), line))
        self.lines.put((time.time(), ""))

    def call(self, tool: str, **arguments: Any) -> dict:
        """The tool call's `result` event; sign-ins it starts happen in Chromium meanwhile."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")
        self.process.stdin.flush()
        while True:
            try:
                arrived, line = self.lines.get(timeout=EVENT_WAIT)
            except queue.Empty:
                pytest.fail(f"no answer to {tool} in {EVENT_WAIT}s:\n{self.log.read_text()}")
            if not line:
                pytest.fail(f"the client exited:\n{self.log.read_text()}")
            event = {**json.loads(line), "arrived": arrived}
            self.events.append(event)
            if event["event"] == "authorize":
                self.sign_in(event["url"])
            elif event["event"] == "result":
                return event

    def sign_in(self, url: str) -> None:
        page = self.page
        page.goto(url)
        if page.locator("input[name=username]").count():
            page.fill("input[name=username]", self.account)
            page.fill("input[name=password]", PASSWORDS[self.account])
            page.click("button[type=submit]")
        approve = page.locator("button[name=decision][value=approve]")
        approve.wait_for()
        self.consent_pages.append(page.inner_text("body"))
        if approve.is_enabled():
            approve.click()
        else:  # nothing on offer that could be granted: the person can only deny
            page.click("button[name=decision][value=deny]")
        page.wait_for_url(re.compile(r"http://127\.0\.0\.1:\d+/callback\?"), timeout=30_000)
        assert "Signed in" in page.content()

    def of(self, kind: str) -> list[dict]:
        return [event for event in self.events if event["event"] == kind]

    def authorizations(self) -> list[dict[str, str]]:
        """The query of every authorization request the client sent the browser to."""
        return [
            {name: values[0] for name, values in parse_qs(urlsplit(event["url"]).query).items()}
            for event in self.of("authorize")
        ]

    def transcript(self) -> str:
        """What the client did, for failure messages: events, with each sign-in's scope."""
        lines = []
        for event in self.events:
            if event["event"] == "authorize":
                query = parse_qs(urlsplit(event["url"]).query)
                lines.append(f"authorize scope={query.get('scope')}")
            else:
                lines.append(json.dumps(event)[:300])
        return "\n".join(lines)

    def access_token(self) -> str:
        return self.of("tokens")[-1]["tokens"]["access_token"]

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start_host(client_command, chromium, tmp_path) -> Iterator[Callable[[str], Host]]:
    """Starts the client under test as a host for an MCP URL; stopped after the test."""
    started: list[Host] = []

    def start(mcp_url: str) -> Host:
        started.append(Host(client_command, mcp_url, chromium, tmp_path / "client.log"))
        return started[-1]

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture
def host(start_host, pair) -> Host:
    return start_host(pair[1])


def introspect(issuer: str, token: str) -> dict:
    """The provider's own view of a token (RFC 7662), asked as the resource server."""
    answer = httpx.post(
        f"{issuer}/introspect", data={"token": token}, auth=("mcp-resource-server", RS_SECRET)
    )
    answer.raise_for_status()
    return answer.json()


def text_of(event: dict) -> str:
    return json.dumps(event.get("result") or event.get("error"))


# --- The tests ---------------------------------------------------------------------------------


def test_registers_signs_in_for_the_resource_and_reads(host, pair):
    issuer, mcp_url = pair
    host.account = "alice"
    read = host.call("read_data")
    assert read["ok"], text_of(read)

    [registered] = host.of("registered")  # dynamic registration (RFC 7591), once
    client_id = registered["client"]["client_id"]
    [sign_in] = host.authorizations()
    assert sign_in["client_id"] == client_id
    assert sign_in["resource"] == mcp_url  # RFC 8707, as the MCP spec requires
    assert sign_in["code_challenge_method"] == "S256"
    claims = introspect(issuer, host.access_token())
    assert claims["active"] and claims["client_id"] == client_id
    assert claims["aud"] in (mcp_url, [mcp_url])
    assert claims["username"] == "alice" and "read" in claims["scope"].split()


def test_alice_steps_up_from_read_to_write(host, pair):
    """The client registers with the scope of its first challenge (`read`); write_data's 403
    insufficient_scope makes it ask for `read write`, and alice may grant both."""
    issuer, _ = pair
    host.account = "alice"
    read = host.call("read_data")
    assert read["ok"], text_of(read)
    first = set(introspect(issuer, host.access_token())["scope"].split())
    assert "read" in first and "write" not in first
    assert "write" not in (host.of("registered")[0]["client"].get("scope") or "").split()

    wrote = host.call("write_data", key="interop", value="stepped up")
    assert wrote["ok"], host.transcript()
    [_, step_up] = host.authorizations()  # one more sign-in: the step-up
    assert {"read", "write"} <= set(step_up["scope"].split())
    assert "left out" not in host.consent_pages[-1], host.consent_pages[-1]
    assert {"read", "write"} <= set(introspect(issuer, host.access_token())["scope"].split())
    assert host.call("read_data", key="interop")["ok"]


# What each client says when bob's step-up cannot get `write`. The Python SDK steps up inside
# the request and then reports the resource server's JSON-RPC refusal. The TypeScript SDK's
# interactive step-up ends every attempt in UnauthorizedError ("go and sign in"), so its own
# retry-limit error is out of reach; the host's one retry after a sign-in bounds it.
REFUSAL = {"typescript": r"^UnauthorizedError", "python": r"write.*scope|insufficient_scope"}


def test_bob_is_refused_write_without_a_sign_in_loop(host, pair, client_name):
    """bob's account allows only `read`: the client's step-up cannot get `write`; the consent
    page says why, and the call ends in a refusal after at most two authorization requests."""
    issuer, _ = pair
    host.account = "bob"
    read = host.call("read_data")
    assert read["ok"], text_of(read)
    before = len(host.authorizations())

    refused = host.call("write_data", key="interop", value="not allowed")
    assert not refused["ok"], host.transcript()
    assert re.search(REFUSAL[client_name], refused["error"]), host.transcript()
    step_ups = host.authorizations()[before:]
    assert 1 <= len(step_ups) <= 2, host.transcript()
    assert all("write" in sign_in["scope"].split() for sign_in in step_ups)
    assert re.search(r"write\W+your account may not", host.consent_pages[-1]), host.consent_pages
    assert "write" not in introspect(issuer, host.access_token())["scope"].split()
    again = host.call("read_data")  # the client is still usable, and bob's read still works
    assert again["ok"], text_of(again)


def test_a_call_after_the_access_token_expired_refreshes_without_a_sign_in(
    start_host, short_lived_pair
):
    """Once the access token has expired, both for the provider and by the client's own
    clock (its `expires_in` counted from when the client had it), the next call refreshes."""
    issuer, mcp_url = short_lived_pair
    host = start_host(mcp_url)
    host.account = "alice"
    assert host.call("read_data")["ok"]
    issued = host.of("tokens")[-1]
    assert issued["tokens"]["expires_in"] == ACCESS_TOKEN_TTL and issued["tokens"]["refresh_token"]
    expired_for_client = issued["arrived"] + ACCESS_TOKEN_TTL
    first = issued["tokens"]["access_token"]
    deadline = time.monotonic() + ACCESS_TOKEN_TTL + 30
    while introspect(issuer, first)["active"] or time.time() <= expired_for_client:
        assert time.monotonic() < deadline, "the access token outlived its lifetime"
        time.sleep(0.5)
    sign_ins = len(host.authorizations())

    refreshed_after = int(time.time())  # the new access token expires at this + TTL or later
    after = host.call("read_data")
    assert after["ok"], text_of(after)
    assert len(host.authorizations()) == sign_ins, host.transcript()  # refreshed, no sign-in
    assert host.access_token() != first
    # The client holds the refreshed token: active, unless its ACCESS_TOKEN_TTL has run out
    # (a slow machine), which cannot be before refreshed_after + ACCESS_TOKEN_TTL.
    access = introspect(issuer, host.access_token())
    assert access["active"] or time.time() >= refreshed_after + ACCESS_TOKEN_TTL, access
