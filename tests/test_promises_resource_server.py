"""SECURITY.md promises of the resource server driven through the running server (issue 17):
a token from another issuer, the refusal cache and a cache TTL of 0, the 413 body limit, a
tool registered without a scope, a server started before its provider, an anonymous batch.
The cache key's hashing is observed on the real verifier talking to the real provider (the
running server offers no honest view of its cache keys, and must not).

Both servers run as subprocesses on free ports. Tokens are obtained outside any event loop;
waits poll against deadlines derived from the setting under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from mcp_oauth.client.headless import obtain_tokens
from mcp_oauth.resource_server.fastmcp_internals import MAX_REQUEST_BODY
from mcp_oauth.resource_server.introspection import IntrospectionVerifier
from mcp_oauth.resource_server.provider_discovery import Backoff, Provider
from mcp_oauth.resource_server.verified_token import TokenRefused
from tests.conftest import RS_AUTH, RS_SECRET, start_provider, start_resource_server
from tests.oauth_helpers import CLIENT_ID
from tests.support import ROOT, ServerProcess, free_port

ACCEPT = "application/json, text/event-stream"


@dataclass
class Stack:
    issuer: str
    foreign_issuer: str
    """Another issuer sharing the provider's database, hence its signing key."""
    introspecting: str
    """MCP URL of a server that introspects, caches no acceptance (TTL 0), refusals an hour."""
    jwt: str
    """MCP URL of a server that validates JWTs locally against the provider's key set."""

    def token(self, resource: str, issuer: str | None = None, scope: str = "read write") -> str:
        coro = obtain_tokens(
            issuer or self.issuer, "alice", "password123", scope=scope, resource=resource
        )
        return asyncio.run(coro)["access_token"]


def mcp_post(url: str, body, token: str | None = None) -> httpx.Response:
    headers = {"Accept": ACCEPT}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers["Content-Type"] = "application/json"
    return httpx.post(url, content=content, headers=headers, timeout=30)


def tool_call(name: str, arguments: dict | None = None, request_id: int = 1) -> dict:
    params = {"name": name, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def counters(url: str) -> dict:
    return httpx.get(url.removesuffix("/mcp") + "/metrics").json()["token_verifier"]


def challenge(response: httpx.Response) -> str:
    assert response.status_code == 401, (response.status_code, response.text)
    return response.headers["WWW-Authenticate"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("promises_rs")
    introspecting = f"http://127.0.0.1:{free_port()}/mcp"
    jwt = f"http://127.0.0.1:{free_port()}/mcp"
    resources = f"{introspecting},{jwt}"
    jwt_format = ["--access-token-format", "jwt"]
    provider = start_provider(tmp, resource=resources, args=jwt_format)
    foreign = start_provider(
        tmp, provider.database_url, resource=resources, args=jwt_format, host="localhost"
    )
    servers = [
        start_resource_server(
            tmp,
            int(introspecting.split(":")[2].split("/")[0]),
            {
                "OAUTH_PROVIDER_URL": provider.url,
                "MCP_RS_CLIENT_SECRET": RS_SECRET,
                "MCP_INTROSPECTION_CACHE_TTL": "0",
                "MCP_INTROSPECTION_REFUSAL_TTL": "3600",
            },
        ),
        start_resource_server(
            tmp,
            int(jwt.split(":")[2].split("/")[0]),
            {"OAUTH_PROVIDER_URL": provider.url, "MCP_TOKEN_VALIDATION": "jwt"},
        ),
    ]
    yield Stack(provider.url, foreign.url, introspecting, jwt)
    for process in (*servers, foreign.process, provider.process):
        process.stop()


# -- iss: only our provider's tokens ----------------------------------------------------------


def test_a_token_from_another_issuer_is_refused_by_the_running_server(stack):
    """The other issuer signs with the very key our provider publishes (they share a
    database) and names this server in `aud`: only `iss` tells its token apart."""
    ours = stack.token(stack.jwt)
    assert mcp_post(stack.jwt, tool_call("get_user_profile"), ours).status_code == 200
    theirs = stack.token(stack.jwt, issuer=stack.foreign_issuer)
    refused = challenge(mcp_post(stack.jwt, tool_call("get_user_profile"), theirs))
    assert 'error="invalid_token"' in refused and stack.foreign_issuer in refused, refused


# -- the introspection cache ------------------------------------------------------------------


def test_a_refused_token_is_not_introspected_again_within_the_refusal_ttl(stack):
    """MCP_INTROSPECTION_REFUSAL_TTL=3600: a dead token retried costs the provider one
    introspection, and every retry still says why it is refused."""
    dead = f"never-issued-{time.time_ns()}"
    before = counters(stack.introspecting)["introspections"]
    retries = [mcp_post(stack.introspecting, tool_call("read_data"), dead) for _ in range(3)]
    reasons = {challenge(retry) for retry in retries}
    assert len(reasons) == 1 and "inactive" in reasons.pop()
    assert counters(stack.introspecting)["introspections"] == before + 1


def test_with_a_cache_ttl_of_0_a_revoked_token_is_refused_at_its_next_call(stack):
    """MCP_INTROSPECTION_CACHE_TTL=0: every call asks the provider, so a revocation applies
    at once."""
    token = stack.token(stack.introspecting)
    before = counters(stack.introspecting)["introspections"]
    for _ in range(2):
        assert mcp_post(stack.introspecting, tool_call("read_data"), token).status_code == 200
    assert counters(stack.introspecting)["introspections"] == before + 2
    revoked = httpx.post(f"{stack.issuer}/revoke", data={"token": token, "client_id": CLIENT_ID})
    assert revoked.status_code == 200
    assert "inactive" in challenge(mcp_post(stack.introspecting, tool_call("read_data"), token))


def test_the_cache_is_keyed_by_sha256_and_holds_no_token(stack):
    """The real verifier against the real provider: after an acceptance and a refusal, each
    cache key is the SHA-256 of its token and neither token appears in any key or entry."""
    accepted = stack.token(stack.introspecting)
    refused = f"never-issued-{time.time_ns()}"

    async def check() -> IntrospectionVerifier:
        async with httpx.AsyncClient(timeout=10) as http:
            provider = Provider(stack.issuer, RS_AUTH[0], RS_AUTH[1], http)
            verifier = IntrospectionVerifier(provider, stack.introspecting)
            await verifier.check(accepted)
            with pytest.raises(TokenRefused):
                await verifier.check(refused)
            return verifier

    verifier = asyncio.run(check())
    caches = {"accepted": verifier._accepted, "refused": verifier._refused}
    for (name, cache), token in zip(caches.items(), (accepted, refused), strict=True):
        assert list(cache.keys()) == [hashlib.sha256(token.encode()).digest()], name
        for other in (accepted, refused):
            assert other not in repr(list(cache.items())), name
            assert other.encode() not in b"".join(cache.keys()), name


# -- bad input ----------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_any_token_check(stack):
    token = stack.token(stack.introspecting)
    before = counters(stack.introspecting)["introspections"]
    note = tool_call("save_user_note", {"text": "x" * MAX_REQUEST_BODY})
    for bearer in (None, token):
        response = mcp_post(stack.introspecting, note, bearer)
        assert response.status_code == 413, response.text[:300]
        assert response.json()["error"]["message"] == "Request body too large"
    assert counters(stack.introspecting)["introspections"] == before


def test_an_anonymous_batch_runs_no_tool(stack):
    """A JSON array is not one request the tool table can judge: it must not run anything
    for a caller without a token, whatever the array holds."""
    token = stack.token(stack.introspecting)
    batch = [tool_call("save_user_note", {"text": "batched"}, 1), tool_call("get_user_notes")]
    response = mcp_post(stack.introspecting, batch)
    assert 400 <= response.status_code < 500, response.text  # the SDK refuses batches
    assert "result" not in response.json(), response.text
    notes = mcp_post(stack.introspecting, tool_call("get_user_notes"), token)
    assert notes.status_code == 200 and "batched" not in notes.text


# -- starting ---------------------------------------------------------------------------------

UNGUARDED_TOOL = """
import sys
sys.argv = ["mcp_resource_server.py", "--host", "127.0.0.1", "--port", sys.argv[1]]
import mcp_resource_server as server

@server.mcp.tool
def sneaky() -> str:
    "Registered with FastMCP directly, so it has no scope in the tool table."
    return "ran"

server.main()
"""


def test_a_tool_registered_without_a_scope_stops_the_server_from_starting(tmp_path):
    """The server exits naming the tool, and never answers a request."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_TOOL)
    port = free_port()
    env = {
        "OAUTH_PROVIDER_URL": f"http://127.0.0.1:{free_port()}",  # nobody there: not needed
        "MCP_RS_CLIENT_SECRET": RS_SECRET,
        "MCP_DATABASE_URL": f"sqlite:///{tmp_path}/rs.db",
        "PYTHONPATH": str(ROOT),  # the script lives elsewhere; the server's modules here
    }
    log = tmp_path / "unguarded.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, str(script), str(port)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while server.poll() is None:
            assert time.monotonic() < deadline, "neither stopped nor serving after 60 s"
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
                pytest.fail(f"started with an unguarded tool (/metrics: {answer.status_code})")
            time.sleep(0.2)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode != 0
    assert "tools without a scope: sneaky" in log.read_text()


def test_a_server_started_before_its_provider_serves_once_the_provider_is_up(tmp_path):
    """No provider yet: the server starts, a token gets 503 with Retry-After (never a 401 that
    would send the client to log in, never an acceptance). Once the provider is up, the same
    kind of call succeeds without restarting the server, within the provider backoff's cap."""
    provider_port, rs_port = free_port(), free_port()
    issuer, mcp_url = f"http://127.0.0.1:{provider_port}", f"http://127.0.0.1:{rs_port}/mcp"
    env = {"OAUTH_PROVIDER_URL": issuer, "MCP_RS_CLIENT_SECRET": RS_SECRET}
    rs = start_resource_server(tmp_path, rs_port, env)
    provider = ServerProcess(
        ["oauth_provider.py", "--host", "127.0.0.1", "--port", str(provider_port)]
        + ["--issuer", issuer, "--database-url", f"sqlite:///{tmp_path}/oauth.db"],
        {"MCP_RS_CLIENT_SECRET": RS_SECRET, "OAUTH_RESOURCES": mcp_url},
        f"{issuer}/.well-known/oauth-authorization-server",
        tmp_path / "provider.log",
    )
    try:
        early = mcp_post(mcp_url, tool_call("get_user_profile"), "a-well-formed-token")
        assert early.status_code == 503 and int(early.headers["Retry-After"]) >= 1
        provider.start()
        token = asyncio.run(
            obtain_tokens(issuer, "alice", "password123", scope="read", resource=mcp_url)
        )["access_token"]
        deadline = time.monotonic() + Backoff().cap + 10
        while (
            answer := mcp_post(mcp_url, tool_call("get_user_profile"), token)
        ).status_code != 200:
            assert answer.status_code == 503, (answer.status_code, answer.text)
            assert time.monotonic() < deadline, "still 503 after the backoff's cap"
            time.sleep(0.5)
        assert '"username":"alice"' in answer.text.replace(" ", "").replace('\\"', '"')
    finally:
        rs.stop()
        provider.stop()
