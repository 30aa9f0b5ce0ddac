"""client.py against the real provider and MCP server, run the way a user runs it.

Both servers run as subprocesses on free ports. The client runs as a subprocess too, with
HOME and XDG_CACHE_HOME in a temporary directory; where a person would act (a browser, a
second device) the test does it over HTTP through the provider's real pages — or, once, with
a real Chromium driven by Playwright.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio
import httpx2
import pytest
import yaml
from mcp.shared.auth import OAuthClientInformationFull

from mcp_oauth.client.authorization_code import AuthorizationRequest, authorization_code_flow
from mcp_oauth.client.discovery import ServerMetadata
from mcp_oauth.client.errors import ClientError
from mcp_oauth.client.headless import authorize_with_password, parse_page
from mcp_oauth.client.identity import REGISTERED_REDIRECT_URI
from mcp_oauth.client.token_requests import DEVICE_CODE_GRANT, Endpoints
from tests.conftest import start_provider, start_resource_server
from tests.support import ROOT, ServerProcess, free_port

RS_SECRET = "client-test-rs-secret-0123456789abcdef012345"
PASSWORDS = {"alice": "password123", "bob": "secret456", "admin": "admin789"}


# --- The servers ---------------------------------------------------------------------------


@dataclass
class Stack:
    issuer: str
    mcp_url: str
    processes: list[ServerProcess]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def introspect(self, token: str) -> dict:
        answer = httpx2.post(
            f"{self.issuer}/introspect",
            data={"token": token},
            auth=("mcp-resource-server", RS_SECRET),
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


def start_stack(tmp: Path, provider_env: dict | None = None, host: str = "127.0.0.1") -> Stack:
    rs_port = free_port()
    mcp_url = f"http://127.0.0.1:{rs_port}/mcp"
    provider = start_provider(
        tmp,
        env={"MCP_RS_CLIENT_SECRET": RS_SECRET, **(provider_env or {})},
        resource=mcp_url,
        host=host,
    )
    rs = start_resource_server(
        tmp, rs_port, {"OAUTH_PROVIDER_URL": provider.url, "MCP_RS_CLIENT_SECRET": RS_SECRET}
    )
    return Stack(provider.url, mcp_url, [provider.process, rs])


# The client-metadata-document test serves its document on loopback, as in development.
# (conftest's providers already lift the per-address registration limit.)
STACK_ENV = {"OAUTH_CIMD_ALLOW_LOOPBACK": "1"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    servers = start_stack(tmp_path_factory.mktemp("client-stack"), STACK_ENV)
    yield servers
    servers.stop()


# --- The client, run as a user would ---------------------------------------------------------


class User:
    """One person's machine: a home directory (and so a token cache) and a terminal."""

    def __init__(self, home: Path, url: str):
        self.home = home
        self.url = url
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "COLUMNS": "250",  # wide enough that rich never wraps a table cell or a URL
            "PYTHONUNBUFFERED": "1",
        }

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "client.py", "--url", self.url, *args]

    def run(self, *args: str, input: str | None = None, timeout: float = 90):
        return subprocess.run(
            self.command(*args),
            cwd=ROOT,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(*args),
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def cache(self, account: str = "default") -> Path:
        return next((self.home / ".cache" / "mcp-oauth").glob(f"*/{account}.json"))

    def tokens(self, account: str) -> dict:
        return json.loads(self.cache(account).read_text())["tokens"]


def headless(account: str) -> list[str]:
    return ["--user", account, "--password", PASSWORDS[account]]


@pytest.fixture
def user(tmp_path, stack) -> User:
    return User(tmp_path, stack.mcp_url)


def assert_one_line_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 1 with a single `✗ cause — fix` line on stderr and no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("✗ ") and " — " in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def read_until(stream, pattern: str, seen: list[str]) -> re.Match:
    """Read a child's output line by line until `pattern` matches (the pipe closing fails)."""
    for line in stream:
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError("pattern never appeared:\n" + "".join(seen))


def finish(process: subprocess.Popen, seen: list[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, "".join(seen) + err


def decide_device_code(issuer: str, user_code: str, account: str, decision: str) -> None:
    """What the person does on their phone: open /device, sign in, enter the code, decide."""
    with httpx2.Client(base_url=issuer, follow_redirects=True, timeout=30) as browser:
        page = browser.get("/device", params={"user_code": user_code})
        fields = dict(parse_page(page.text).forms[0].fields)
        fields.update(username=account, password=PASSWORDS[account])
        page = browser.post("/login", data=fields)  # → back to /device with the code filled in
        page = browser.post("/device", data=dict(parse_page(page.text).forms[0].fields))
        fields = dict(parse_page(page.text).forms[0].fields) | {"decision": decision}
        page = browser.post("/device", data=fields)
        assert page.status_code == 200, page.text


# --- Discovery, identity and headless sign-in ---------------------------------------------------


def test_tools_lists_every_tool_with_what_it_needs_without_signing_in(user):
    result = user.run("tools")
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[2].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "scope admin" in rows["admin_operation"] and "scope write" in rows["write_data"]
    assert "no token" in rows["public_info"] and "any valid token" in rows["get_user_profile"]
    assert not (user.home / ".cache" / "mcp-oauth").exists()  # nothing needed a sign-in


def test_headless_sign_in_discovers_everything_from_the_401(user, stack):
    result = user.run(*headless("alice"), "--trace", "call", "write_data", "key=k", "value=v1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["saved"]["value"] == "v1"
    trace = result.stderr
    steps = [
        r"client ← MCP server  401 Unauthorized  WWW-Authenticate: Bearer resource_metadata=",
        r"client → MCP server  GET \S+/.well-known/oauth-protected-resource/mcp",
        r"client → provider  GET \S+/.well-known/oauth-authorization-server",
        r"client → provider  POST \S+/register",
        r"client → provider  GET \S+/authorize\?response_type=code&client_id=\S+"
        r"&code_challenge=\S+&code_challenge_method=S256&resource=\S+&scope=write",
        r"client ← provider  303 See Other  Location: \S+/callback\?code=‹redacted›&state=\S+&iss=",
        r"client → provider  POST \S+/token  grant_type=authorization_code code=‹redacted› "
        r"redirect_uri=\S+ code_verifier=‹redacted› resource=" + re.escape(stack.mcp_url),
        r"client → MCP server  POST \S+/mcp  Authorization: Bearer ‹redacted›  MCP tools/call",
    ]
    position = 0
    for step in steps:
        match = re.compile(step).search(trace, position)
        assert match, f"missing, in order: {step}\n{trace}"
        position = match.end()
    tokens = user.tokens("alice")
    for secret in (tokens["access_token"], tokens["refresh_token"], PASSWORDS["alice"]):
        assert secret not in result.stdout + trace


def test_token_cache_is_private_to_the_user(user):
    assert user.run(*headless("bob"), "call", "read_data").returncode == 0
    cache = user.cache("bob")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    for directory in (cache.parent, cache.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert cache.parent.parent == user.home / ".cache" / "mcp-oauth"


def test_cached_tokens_are_used_without_signing_in_again(user):
    assert user.run(*headless("alice"), "call", "read_data").returncode == 0
    again = user.run("--user", "alice", "--trace", "--no-browser", "whoami")
    assert again.returncode == 0, again.stderr
    assert "│ alice" in again.stdout and "/authorize" not in again.stderr


def test_pre_registered_client_id_skips_registration(user):
    result = user.run(*headless("alice"), "--client-id", "mcp-client", "--trace", "whoami")
    assert result.returncode == 0, result.stderr
    assert not re.search(r"POST \S+/register", result.stderr)
    assert "client_id=mcp-client" in result.stderr
    assert "│ client id   │ mcp-client" in result.stdout


CONFIDENTIAL_SECRET = "confidential-app-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def confidential_stack(tmp_path_factory) -> Stack:
    """A provider whose users.yaml adds a confidential client with a loopback redirect URI."""
    tmp = tmp_path_factory.mktemp("confidential-stack")
    users = yaml.safe_load((ROOT / "users.yaml").read_text())
    users["clients"].append(
        {
            "client_id": "confidential-app",
            "client_name": "A confidential app",
            "token_endpoint_auth_method": "client_secret_basic",
            "client_secret_env": "CONFIDENTIAL_APP_SECRET",
            "redirect_uris": ["http://127.0.0.1/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "scope": "read write",
        }
    )
    (tmp / "users.yaml").write_text(yaml.safe_dump(users))
    rs_port = free_port()
    mcp_url = f"http://127.0.0.1:{rs_port}/mcp"
    provider = start_provider(
        tmp,
        env={"MCP_RS_CLIENT_SECRET": RS_SECRET, "CONFIDENTIAL_APP_SECRET": CONFIDENTIAL_SECRET},
        args=["--users", str(tmp / "users.yaml")],
        resource=mcp_url,
    )
    rs = start_resource_server(
        tmp, rs_port, {"OAUTH_PROVIDER_URL": provider.url, "MCP_RS_CLIENT_SECRET": RS_SECRET}
    )
    servers = Stack(provider.url, mcp_url, [provider.process, rs])
    yield servers
    servers.stop()


def test_pre_registered_confidential_client_authenticates_with_its_secret(
    tmp_path, confidential_stack
):
    """--client-secret (here MCP_CLIENT_SECRET): the secret goes to the token endpoint as the
    provider prefers (client_secret_basic), is kept only in the owner-only cache, never shown."""
    user = User(tmp_path, confidential_stack.mcp_url)
    user.env["MCP_CLIENT_SECRET"] = CONFIDENTIAL_SECRET
    result = user.run(*headless("bob"), "--client-id", "confidential-app", "--trace", "whoami")
    assert result.returncode == 0, result.stderr
    assert re.search(r"POST \S+/token  Authorization: Basic ‹redacted›", result.stderr)
    assert CONFIDENTIAL_SECRET not in result.stdout + result.stderr
    cache = user.cache("bob")
    assert CONFIDENTIAL_SECRET in cache.read_text()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600

    user.env["MCP_CLIENT_SECRET"] = "not-the-secret"
    cache.unlink()
    wrong = user.run(*headless("bob"), "--client-id", "confidential-app", "whoami")
    assert_one_line_failure(wrong, "invalid_client")
    assert "not-the-secret" not in wrong.stderr


def test_one_authorization_request_per_sign_in(user, stack):
    """The authorization URL is requested once, by whoever walks the pages: in browser mode
    the browser alone (no pre-flight by the client); headless, the client once, as a browser."""
    code, _, err = sign_in_through_browser(user, stack, "bob", "--trace", "whoami")
    assert code == 0, err
    assert "browser → callback" in err
    assert not re.search(r"client → provider  GET \S+/authorize", err), err
    headless_run = user.run(*headless("alice"), "--trace", "call", "read_data")
    assert headless_run.returncode == 0, headless_run.stderr
    before_login = headless_run.stderr.split("/login")[0]
    assert len(re.findall(r"client → provider  GET \S+/authorize\?", before_login)) == 1


def test_client_metadata_document_is_the_client_id_where_supported(user):
    """The provider advertises client ID metadata documents, so the document's URL is the
    client id: no registration. (The stack allows a loopback document, for development.)"""
    document: dict = {}

    class Document(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server hook
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Document)
    url = f"http://127.0.0.1:{server.server_port}/mcp-client.json"
    document.update(
        client_id=url,
        client_name="Notes desk (document)",
        redirect_uris=[REGISTERED_REDIRECT_URI],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = user.run(*headless("bob"), "--client-metadata-url", url, "--trace", "whoami")
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert not re.search(r"POST \S+/register", result.stderr)
    assert f"client_id={quote(url, safe='')}" in result.stderr or url in result.stderr


def test_show_token_is_the_only_way_to_see_the_token(user):
    plain = user.run(*headless("bob"), "whoami")
    shown = user.run("--user", "bob", "--show-token", "whoami")
    token = user.tokens("bob")["access_token"]
    assert token not in plain.stdout + plain.stderr
    assert f"access token: {token}" in shown.stdout


def test_wrong_password_is_one_line(user):
    result = user.run("--user", "alice", "--password", "nope", "call", "read_data")
    assert_one_line_failure(result, "wrong password for alice", "--password")


def test_password_is_never_sent_over_plain_http_to_another_host(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent; this only picks the outbound address
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback address")
    remote = start_stack(tmp_path, host=address)
    try:
        result = User(tmp_path, remote.mcp_url).run(*headless("alice"), "call", "read_data")
    finally:
        remote.stop()
    assert_one_line_failure(result, "refusing to send alice's password over plain http", address)


def test_unreachable_mcp_server_is_one_line(tmp_path):
    result = User(tmp_path, f"http://127.0.0.1:{free_port()}/mcp").run("tools")
    assert_one_line_failure(result, "cannot reach the MCP server", "python mcp_resource_server.py")


def test_a_url_that_is_not_an_mcp_server_is_one_line(tmp_path, stack):
    result = User(tmp_path, f"{stack.issuer}/authorize").run("tools")
    assert_one_line_failure(result, "is not an MCP server", "--url")


def test_unreachable_provider_is_one_line(tmp_path):
    stranded = start_stack(tmp_path)
    stranded.processes[0].stop()  # the provider goes away; the MCP server stays
    try:
        result = User(tmp_path, stranded.mcp_url).run(*headless("alice"), "call", "read_data")
    finally:
        stranded.stop()
    assert_one_line_failure(
        result, "cannot reach the authorization server", "start it (python oauth_provider.py)"
    )


# --- Browser sign-in: the test plays the browser over HTTP -------------------------------------


def sign_in_through_browser(
    user: User, stack: Stack, account: str, *args: str, approve: bool = True
) -> tuple[int, str, str]:
    client = user.start("--no-browser", *args)
    seen: list[str] = []
    url = read_until(client.stderr, re.escape(stack.issuer) + r"/authorize\?\S+", seen).group(0)

    async def browser() -> None:
        async with httpx2.AsyncClient(timeout=30) as http:
            callback = await authorize_with_password(
                http, url, account, PASSWORDS[account], approve=approve
            )
            assert callback.startswith("http://127.0.0.1:")  # our loopback server (RFC 8252)
            landed = await http.get(callback)
            assert landed.status_code == 200 and "close this tab" in landed.text

    asyncio.run(browser())
    return finish(client, seen)


def test_browser_sign_in_through_the_loopback_callback(user, stack):
    code, out, err = sign_in_through_browser(user, stack, "bob", "whoami")
    assert code == 0, err
    assert "│ bob" in out and re.search(r"│ [^│\n]*\bread\b", out), out
    assert user.cache("default").exists()


def test_browser_consent_denied_is_one_line(user, stack):
    code, _, err = sign_in_through_browser(user, stack, "alice", "whoami", approve=False)
    assert code == 1
    assert "access_denied" in err and "approve the request" in err and "Traceback" not in err


def test_real_browser_signs_in_with_chromium(user, stack):
    """Debian's Chromium, driven by Playwright, fills in the real login and consent pages."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    client = user.start("--no-browser", "whoami")
    seen: list[str] = []
    url = read_until(client.stderr, re.escape(stack.issuer) + r"/authorize\?\S+", seen).group(0)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        page.goto(url)
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", PASSWORDS["alice"])
        page.click("button[type=submit]")
        page.click("button[name=decision][value=approve]")
        page.wait_for_url(re.compile(r"http://127\.0\.0\.1:\d+/callback\?"))
        assert "Signed in" in page.content()
        browser.close()
    code, out, err = finish(client, seen)
    assert code == 0, err
    assert "│ alice" in out


# --- Device sign-in (RFC 8628) ----------------------------------------------------------------


def device_sign_in(user: User, stack: Stack, account: str, decision: str) -> tuple[int, str, str]:
    client = user.start("--device", "whoami")
    seen: list[str] = []
    user_code = read_until(client.stderr, r"enter the code\s+([A-Z0-9-]{4,})", seen).group(1)
    decide_device_code(stack.issuer, user_code, account, decision)
    return finish(client, seen)


def test_device_sign_in_shows_the_code_and_polls_until_approved(user, stack):
    code, out, err = device_sign_in(user, stack, "admin", "approve")
    assert code == 0, err
    assert f"open {stack.issuer}/device" in err
    assert "│ admin" in out


def test_device_sign_in_denied_is_one_line(user, stack):
    code, _, err = device_sign_in(user, stack, "bob", "deny")
    assert code == 1
    assert "access_denied" in err and "Traceback" not in err


def test_device_polling_honours_interval_and_slow_down(stack):
    """Someone polls the same code just before the client does: the client's poll is then too
    early, the provider answers slow_down, and the client waits five seconds longer."""
    metadata = ServerMetadata.model_validate(
        httpx2.get(f"{stack.issuer}/.well-known/oauth-authorization-server").json()
    )
    client = OAuthClientInformationFull(client_id="mcp-client", token_endpoint_auth_method="none")
    polls: list[tuple[float, str]] = []

    async def record(response: httpx2.Response) -> None:
        if response.request.url.path == "/token":
            await response.aread()
            polls.append((time.monotonic(), response.json().get("error", "tokens")))

    async def scenario() -> float:
        async with httpx2.AsyncClient(event_hooks={"response": [record]}) as http:
            endpoints = Endpoints(http, metadata, client, stack.mcp_url)
            device = await endpoints.start_device_authorization("read")
            started = time.monotonic()

            async def meddle_then_approve() -> None:
                await anyio.sleep(device.interval - 1.5)
                early = {"grant_type": DEVICE_CODE_GRANT, "device_code": device.device_code}
                answer = httpx2.post(
                    str(metadata.token_endpoint), data=early | {"client_id": "mcp-client"}
                )
                assert answer.json()["error"] == "authorization_pending"
                await anyio.sleep(2.5)
                await anyio.to_thread.run_sync(
                    decide_device_code, stack.issuer, device.user_code, "bob", "approve"
                )

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(meddle_then_approve)
                tokens = await endpoints.poll_device_token(device)
            assert tokens.scope == "read"
            return started

    started = asyncio.run(scenario())
    assert [outcome for _, outcome in polls] == ["slow_down", "tokens"]
    first, second = polls[0][0], polls[1][0]
    # Lower bounds only, which RFC 8628 §3.5 makes the client guarantee; how much later a busy
    # machine polls is not the client's to promise.
    assert first - started >= 4.9  # the first poll waited the interval
    assert second - first >= 9.9  # after slow_down: interval + 5 s


# --- Refresh, step-up, logout -----------------------------------------------------------------


def test_refresh_before_expiry_rotates_the_refresh_token(tmp_path):
    short = start_stack(tmp_path, provider_env={"OAUTH_ACCESS_TOKEN_TTL": "3"})
    try:
        person = User(tmp_path, short.mcp_url)
        assert person.run(*headless("alice"), "call", "read_data").returncode == 0
        first = person.tokens("alice")
        time.sleep(3.5)  # the access token has expired
        refreshed_after = int(time.time())  # the new access token expires at this + 3 or later
        result = person.run("--user", "alice", "--no-browser", "--trace", "call", "read_data")
        assert result.returncode == 0, result.stderr
        assert "grant_type=refresh_token refresh_token=‹redacted›" in result.stderr
        assert "/authorize" not in result.stderr  # no new sign-in
        second = person.tokens("alice")
        assert second["refresh_token"] != first["refresh_token"]  # rotated and stored
        assert second["access_token"] != first["access_token"]
        assert short.introspect(second["refresh_token"])["active"] is True
        assert short.introspect(first["refresh_token"]) == {"active": False}
        # The stored access token is the refreshed one: active, unless its 3 s have run out
        # (a slow machine), which cannot be before refreshed_after + 3.
        access = short.introspect(second["access_token"])
        assert access["active"] is True or time.time() >= refreshed_after + 3, access
    finally:
        short.stop()


def test_step_up_asks_for_the_union_of_scopes_once(user):
    result = user.run(
        *headless("alice"), "--scope", "read", "--trace", "call", "write_data", "key=s", "value=v"
    )
    assert result.returncode == 0, result.stderr
    assert 'insufficient_scope", scope="write"' in result.stderr
    asked = re.findall(r"→ provider  GET \S+/authorize\?.*&scope=(.*)$", result.stderr, re.M)
    assert list(dict.fromkeys(asked)) == ["read", "read write"]  # the union, on one step-up
    assert user.tokens("alice")["scope"] == "read write"


def test_step_up_says_plainly_when_the_account_is_not_allowed(user):
    assert (
        user.run(*headless("alice"), "--scope", "read write", "call", "read_data").returncode == 0
    )
    first = user.run(*headless("alice"), "--trace", "call", "admin_operation", "action=list_grants")
    assert first.returncode == 1
    assert len(re.findall(r"grant_type=authorization_code", first.stderr)) == 1  # asked once
    assert "✗ alice is not allowed scope 'admin' (the provider granted: read write)" in first.stderr
    again = user.run("--user", "alice", "--trace", "call", "admin_operation", "action=list_grants")
    assert_one_line_failure_in_trace(again, "alice is not allowed scope 'admin'")
    assert "/authorize" not in again.stderr  # never asks twice


def assert_one_line_failure_in_trace(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 1
    failures = [line for line in result.stderr.splitlines() if line.startswith("✗ ")]
    assert len(failures) == 1 and fragment in failures[0], result.stderr


def test_account_without_any_requested_scope_is_told_plainly(user):
    result = user.run(*headless("bob"), "call", "write_data", "key=k", "value=v")
    assert_one_line_failure(result, "bob is not allowed scope 'write'")


def test_logout_revokes_both_tokens_and_deletes_the_cache(user, stack):
    assert user.run(*headless("alice"), "call", "read_data").returncode == 0
    tokens = user.tokens("alice")
    cache = user.cache("alice")
    result = user.run("--user", "alice", "--trace", "logout")
    assert result.returncode == 0, result.stderr
    assert "token_type_hint=refresh_token" in result.stderr
    assert "token_type_hint=access_token" in result.stderr
    assert not cache.exists()
    assert stack.introspect(tokens["access_token"]) == {"active": False}
    assert stack.introspect(tokens["refresh_token"]) == {"active": False}
    again = user.run("--user", "alice", "logout")
    assert again.returncode == 0 and "Not signed in" in again.stdout


def test_stale_registration_is_replaced_after_the_provider_forgets_it(user, stack):
    assert user.run(*headless("bob"), "whoami").returncode == 0
    cache = user.cache("bob")
    saved = json.loads(cache.read_text())
    saved["client"]["client_id"] = "forgotten-by-the-provider"
    saved.pop("tokens")
    cache.write_text(json.dumps(saved))
    result = user.run(*headless("bob"), "--trace", "whoami")
    assert result.returncode == 0, result.stderr
    assert re.search(r"POST \S+/register", result.stderr) and "│ bob" in result.stdout


def test_a_resource_moved_to_another_provider_gets_none_of_the_old_credentials(tmp_path):
    """SEP-2352: alice signed in through provider A; the MCP server (same URL) now names
    provider B. The client neither refreshes A's tokens (B would not accept A's tokens, and
    A's would not open the server) nor presents A's client id or refresh token to B: it
    registers at B and signs in there, once."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    old = start_stack(tmp_path / "a")
    running = list(old.processes)
    try:
        user = User(tmp_path / "home", old.mcp_url)
        assert user.run(*headless("alice"), "whoami").returncode == 0
        old_client_id = json.loads(user.cache("alice").read_text())["client"]["client_id"]
        old.processes[1].stop()  # the MCP server moves; provider A stays up
        new_provider = start_provider(
            tmp_path / "b", env={"MCP_RS_CLIENT_SECRET": RS_SECRET}, resource=old.mcp_url
        )
        running.append(new_provider.process)
        running.append(
            start_resource_server(
                tmp_path / "b",
                int(urlsplit(old.mcp_url).port),
                {"OAUTH_PROVIDER_URL": new_provider.url, "MCP_RS_CLIENT_SECRET": RS_SECRET},
            )
        )
        result = user.run(*headless("alice"), "--trace", "whoami")
        assert result.returncode == 0, result.stderr
        assert "│ alice" in result.stdout
        requests = [line for line in result.stderr.splitlines() if " → provider " in line]
        assert not any("grant_type=refresh_token" in line for line in requests), requests
        assert not any(old_client_id in line for line in requests), requests
        assert any(
            re.search(rf"POST {re.escape(new_provider.url)}/register", line) for line in requests
        )
        saved = json.loads(user.cache("alice").read_text())
        assert saved["client"]["client_id"] != old_client_id
    finally:
        for process in reversed(running):
            process.stop()


def test_authorization_response_from_another_issuer_is_refused(stack):
    """RFC 9207: an `iss` that is not the issuer means a mix-up; no code is redeemed."""
    metadata = ServerMetadata.model_validate(
        httpx2.get(f"{stack.issuer}/.well-known/oauth-authorization-server").json()
    )
    client = OAuthClientInformationFull(client_id="mcp-client", token_endpoint_auth_method="none")

    async def attacker_in_the_middle(url: str) -> str:
        async with httpx2.AsyncClient(timeout=30) as http:
            callback = await authorize_with_password(http, url, "alice", PASSWORDS["alice"])
        parts = urlsplit(callback)
        query = dict(parse_qsl(parts.query)) | {"iss": "http://attacker.example"}
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def flow() -> None:
        async with httpx2.AsyncClient() as http:
            request = AuthorizationRequest(Endpoints(http, metadata, client, stack.mcp_url), "read")
            await authorization_code_flow(request, REGISTERED_REDIRECT_URI, attacker_in_the_middle)

    with pytest.raises(ClientError, match="RFC 9207"):
        asyncio.run(flow())


# --- The tool prompt --------------------------------------------------------------------------


def test_tool_prompt_calls_by_number_name_and_asked_arguments(user):
    script = "\n".join(
        [
            "5 key=n value=by-number",  # write_data is tool 5
            "read_data",  # asked for its optional key: Enter skips it
            "",
            "nonsense",
            "quit",
        ]
    )
    result = user.run(*headless("alice"), "--scope", "read write", input=script + "\n")
    assert result.returncode == 0, result.stderr
    assert "│ user        │ alice" in result.stdout
    assert re.search(r"│\s+5 │ write_data", result.stdout)
    assert '"value": "by-number"' in result.stdout
    assert '"records"' in result.stdout
    assert "no tool 'nonsense'" in result.stderr


# --- The demo ---------------------------------------------------------------------------------


def test_demo_prints_every_tool_for_every_user_as_users_yaml_grants(user):
    result = user.run("--demo", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Every outcome matches the scopes users.yaml grants." in result.stdout
    row = next(line for line in result.stdout.splitlines() if "admin_operation" in line)
    assert row.count("✗ denied") == 2 and row.count("✓ allowed") == 1


def test_demo_starts_the_servers_it_needs_and_stops_them(tmp_path):
    for port in (8000, 9000):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is in use; the demo would use that server")
    result = User(tmp_path, "http://localhost:8000/mcp").run("--demo", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Started oauth_provider.py" in result.stderr
    assert "Started mcp_resource_server.py" in result.stderr
    assert "Stopped oauth_provider.py" in result.stderr
    for port in (8000, 9000):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # stopped what it started
