"""The MCP resource server against the real provider, over real HTTP.

Both servers run as subprocesses on free ports; users sign in through the provider's real
login and consent pages (authorization code flow with PKCE). Tool calls go through a real MCP
client; exact status codes and headers are checked with raw httpx.

Each test passes alone and in any order: tokens are obtained outside any event loop, and what
a test asserts about time follows from the design (a revoked token works at most one cache TTL
after its answer was cached), never from how fast this machine happens to be. Tests that need
a cache entry to outlive their steps use a second resource server whose cache lasts an hour.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
import pytest
from fastmcp import Client, FastMCP
from fastmcp.exceptions import ToolError

from mcp_oauth.client.headless import obtain_tokens
from mcp_oauth.resource_server.tool_scopes import PUBLIC, SIGNED_IN, ToolScopes, satisfied
from tests.conftest import RS_SECRET, start_provider, start_resource_server
from tests.support import ServerProcess, free_port

CACHE_TTL = 2  # seconds: short, so revocation shows within a test
STEADY_CACHE_TTL = 3600  # seconds: a cached answer outlives any test that relies on it
PASSWORDS = {"alice": "password123", "bob": "secret456", "admin": "admin789"}


@dataclass
class Stack:
    provider: ServerProcess
    rs: ServerProcess
    issuer: str
    mcp_url: str
    steady_url: str
    """Where the resource server with the hour-long cache runs (the `steady` fixture)."""
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return self.mcp_url.removesuffix("/mcp")

    @property
    def metadata_url(self) -> str:
        return f"{self.origin}/.well-known/oauth-protected-resource/mcp"

    def login(self, username: str, resource: str | None = "", scope: str = "read write admin"):
        """A new token response for `username` (resource defaults to this RS)."""
        resource = self.mcp_url if resource == "" else resource
        coro = obtain_tokens(
            self.issuer, username, PASSWORDS[username], scope=scope, resource=resource
        )
        return asyncio.run(coro)

    def token(self, username: str) -> str:
        """A token for `username`, shared between tests until `forget` (after revocation)."""
        if username not in self.tokens:
            self.tokens[username] = self.login(username)["access_token"]
        return self.tokens[username]

    def forget(self, username: str) -> None:
        self.tokens.pop(username, None)

    def metrics(self) -> dict:
        return httpx.get(f"{self.origin}/metrics").json()["token_verifier"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    tmp = tmp_path_factory.mktemp("resource_server")
    rs_port, steady_port = free_port(), free_port()
    mcp_url = f"http://127.0.0.1:{rs_port}/mcp"
    steady_url = f"http://127.0.0.1:{steady_port}/mcp"
    provider = start_provider(tmp, resource=f"{mcp_url},{steady_url}")
    rs = start_resource_server(
        tmp,
        rs_port,
        {
            "OAUTH_PROVIDER_URL": provider.url,
            "MCP_RS_CLIENT_SECRET": RS_SECRET,
            "MCP_INTROSPECTION_CACHE_TTL": str(CACHE_TTL),
        },
    )
    yield Stack(provider.process, rs, provider.url, mcp_url, steady_url)
    rs.stop()
    provider.process.stop()


@pytest.fixture(scope="module")
def steady(stack: Stack, tmp_path_factory) -> Stack:
    """A second resource server on the same provider whose positive answers stay cached for
    an hour, for tests whose steps must not outlast a cache entry (started on first need)."""
    port = urlsplit(stack.steady_url).port
    assert port is not None
    rs = start_resource_server(
        tmp_path_factory.mktemp("steady_resource_server"),
        port,
        {
            "OAUTH_PROVIDER_URL": stack.issuer,
            "MCP_RS_CLIENT_SECRET": RS_SECRET,
            "MCP_INTROSPECTION_CACHE_TTL": str(STEADY_CACHE_TTL),
        },
    )
    yield replace(stack, rs=rs, mcp_url=stack.steady_url, tokens={})
    rs.stop()


def rpc(stack: Stack, method: str, params: dict | None = None, token: str | None = None):
    """One raw JSON-RPC POST to the MCP endpoint (stateless, no session needed)."""
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    return httpx.post(stack.mcp_url, json=body, headers=headers, timeout=30)


def call(stack: Stack, tool: str, arguments: dict | None = None, token: str | None = None):
    return rpc(stack, "tools/call", {"name": tool, "arguments": arguments or {}}, token)


def result_of(response: httpx.Response) -> dict:
    """The JSON-RPC message in a JSON or single-event SSE response."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return response.json()


async def tool_data(url: str, token: str, tool: str, arguments: dict | None = None):
    """Call a tool through a real MCP client with `token`; the tool's structured result."""
    async with Client(url, auth=token) as client:
        return (await client.call_tool(tool, arguments or {})).data


def use(stack: Stack, username: str, tool: str, arguments: dict | None = None):
    """A tool's result for `username`. The token is obtained first, outside the event loop
    (signing in runs its own)."""
    token = stack.token(username)
    return asyncio.run(tool_data(stack.mcp_url, token, tool, arguments))


def assert_refused_within_one_cache_ttl(stack: Stack, token: str, since: float) -> None:
    """Poll until `token` is refused (401). `since` (time.monotonic, the same clock as the
    server's cache) is a moment after its positive answer was cached: any call that starts
    one CACHE_TTL after it must be refused, however slow this machine is."""
    while True:
        started = time.monotonic()
        status = call(stack, "get_user_profile", {}, token).status_code
        if status == 401:
            return
        assert status == 200, status
        assert started < since + CACHE_TTL, "revoked token still accepted after the cache TTL"
        time.sleep(0.2)


# -- the tool/scope table, pure --------------------------------------------------------------


def test_requirement_of_each_message_kind():
    table = ToolScopes(FastMCP("table"), {"read": "read things"})

    @table.tool(scope=PUBLIC)
    def public_info() -> str:
        return ""

    @table.tool(scope=SIGNED_IN)
    def get_user_profile() -> str:
        return ""

    @table.tool(scope="read")
    def read_data() -> str:
        return ""

    def tools_call(name, method="tools/call"):
        return {"method": method, "params": {"name": name}}

    assert table.requirement(tools_call("public_info")) is PUBLIC
    assert table.requirement(tools_call("get_user_profile")) is SIGNED_IN
    assert table.requirement(tools_call("read_data")) == "read"
    assert table.requirement(tools_call("no_such_tool")) is SIGNED_IN  # never public by accident
    assert table.requirement(tools_call(["read_data"])) is SIGNED_IN
    # Other spellings need what the name they resemble needs.
    assert table.requirement(tools_call("Read_Data")) == "read"
    assert table.requirement(tools_call("read_data", method=" TOOLS/Call")) == "read"
    for method in ["initialize", "server/discover", "ping", "tools/list", "notifications/x"]:
        assert table.requirement({"method": method}) is PUBLIC
    assert table.requirement({"method": "resources/read"}) is SIGNED_IN
    assert table.requirement({"method": "Resources/Read"}) is SIGNED_IN
    assert table.requirement({"method": "no/such"}) is PUBLIC  # -32601 whoever asks
    # A batch (refused by the gate after the token check) needs what its calls need.
    assert table.requirement([tools_call("public_info"), tools_call("read_data")]) == "read"
    assert table.requirement([{"method": "tools/list"}, tools_call("public_info")]) is PUBLIC
    assert table.requirement([]) is PUBLIC


def test_satisfied():
    assert satisfied(PUBLIC, None) and satisfied(SIGNED_IN, []) and satisfied("read", ["read"])
    assert not satisfied(SIGNED_IN, None) and not satisfied("write", ["read"])


# -- discovery documents ---------------------------------------------------------------------


def test_protected_resource_metadata_at_both_well_known_urls(stack):
    issuer = httpx.get(f"{stack.issuer}/.well-known/oauth-authorization-server").json()["issuer"]
    expected = {
        "resource": stack.mcp_url,
        "authorization_servers": [issuer],
        "scopes_supported": ["read", "write", "admin"],
        "bearer_methods_supported": ["header"],
        "resource_name": "mcp-oauth resource server",
    }
    for url in [stack.metadata_url, f"{stack.origin}/.well-known/oauth-protected-resource"]:
        response = httpx.get(url)
        assert response.status_code == 200
        assert response.json() == expected
    assert issuer == stack.issuer  # verbatim: no trailing slash added


# -- anonymous use ---------------------------------------------------------------------------


def test_each_tool_publishes_the_scope_it_needs_in_its_meta(stack):
    async def listed():
        async with Client(stack.mcp_url) as client:
            return {tool.name: (tool.meta or {}) for tool in await client.list_tools()}

    metas = asyncio.run(listed())
    assert metas["public_info"]["required_scope"] == "no token"
    assert metas["get_user_profile"]["required_scope"] == "any valid token"
    assert metas["write_data"]["required_scope"] == "write"
    assert metas["admin_operation"]["required_scope"] == "admin"


def test_anonymous_client_initializes_lists_tools_and_calls_public_info(stack):
    async def anonymous():
        async with Client(stack.mcp_url) as client:
            tools = {tool.name for tool in await client.list_tools()}
            info = (await client.call_tool("public_info", {})).data
            return tools, info

    tools, info = asyncio.run(anonymous())
    assert tools == {
        "public_info",
        "get_user_profile",
        "list_available_resources",
        "read_data",
        "write_data",
        "save_user_note",
        "get_user_notes",
        "delete_user_note",
        "get_downstream_profile",
        "admin_operation",
    }
    assert info["resource"] == stack.mcp_url and info["tools"]["admin_operation"] == "scope admin"


def test_anonymous_handshake_era_initialize_and_notification(stack):
    init = rpc(
        stack,
        "initialize",
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    )
    assert init.status_code == 200
    assert result_of(init)["result"]["serverInfo"]["name"] == "mcp-oauth resource server"
    notification = httpx.post(
        stack.mcp_url,
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert notification.status_code == 202


# -- challenges ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "scope"),
    [("get_user_profile", "read"), ("read_data", "read"), ("admin_operation", "admin")],
)
def test_anonymous_protected_call_gets_401_naming_metadata_and_scope(stack, tool, scope):
    response = call(stack, tool)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer resource_metadata="{stack.metadata_url}", scope="{scope}"'
    )


@pytest.mark.parametrize("method", ["tools/call", "tools/list"])
def test_invalid_token_gets_401_invalid_token_saying_why(stack, method):
    response = rpc(stack, method, {"name": "read_data", "arguments": {}}, token="not-a-token")
    assert response.status_code == 401
    why = f"{stack.issuer} reports the token inactive (expired, revoked or unknown)"
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer error="invalid_token", error_description="{why}", '
        f'resource_metadata="{stack.metadata_url}", scope="read"'
    )
    assert response.json()["error"]["data"] == {
        "error": "invalid_token",
        "error_description": why,
        "resource_metadata": stack.metadata_url,
        "scope": "read",
    }
    assert f"Refused a bearer token: {why}" in stack.rs.output()
    assert "not-a-token" not in stack.rs.output()


def test_missing_scope_gets_403_insufficient_scope(stack):
    response = call(stack, "admin_operation", {"action": "list_grants"}, stack.token("alice"))
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="admin", '
        f'resource_metadata="{stack.metadata_url}"'
    )
    bob = call(stack, "write_data", {"key": "k", "value": "v"}, stack.token("bob"))
    assert bob.status_code == 403
    challenge = bob.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope", scope="write"')


# -- who may do what -------------------------------------------------------------------------

ARGUMENTS = {
    "get_user_profile": {},
    "list_available_resources": {},
    "read_data": {},
    "get_user_notes": {},
    "write_data": {"key": "matrix", "value": "x"},
    "save_user_note": {"text": "matrix"},
    "delete_user_note": {"note_id": 999_999},  # allowed, then a tool error: no such note
    "get_downstream_profile": {},
    "admin_operation": {"action": "list_grants"},
}
# The tool's own answer when it ran but had nothing to act on (not a refusal of the caller).
TOOL_ERRORS = {"delete_user_note": "You have no note with id 999999."}
ALLOWED = {
    "alice": set(ARGUMENTS) - {"admin_operation"},
    "bob": {
        "get_user_profile",
        "list_available_resources",
        "read_data",
        "get_user_notes",
        "get_downstream_profile",
    },
    "admin": set(ARGUMENTS),
}


@pytest.mark.parametrize("username", ["alice", "bob", "admin"])
def test_scope_matrix(stack, username):
    token = stack.token(username)
    for tool, arguments in ARGUMENTS.items():
        response = call(stack, tool, arguments, token)
        expected = 200 if tool in ALLOWED[username] else 403
        assert response.status_code == expected, (username, tool, response.text)
        if expected == 200:  # allowed means the tool ran and gave its own answer
            message = result_of(response)
            assert "error" not in message, (username, tool, message)
            result = message["result"]
            if tool in TOOL_ERRORS:
                assert result["isError"] and result["content"][0]["text"] == TOOL_ERRORS[tool]
            else:
                assert not result.get("isError"), (username, tool, message)
    tools = use(stack, username, "list_available_resources")["tools"]
    assert {t["tool"] for t in tools if t["allowed"]} == ALLOWED[username] | {"public_info"}


def test_profile_comes_from_the_token(stack):
    """The expiry is the token's own: its `exp` as the provider states it, and the seconds
    left at some moment of the call (a token of its own, not one shared since the module
    started)."""
    token = stack.login("bob")["access_token"]
    claims = httpx.post(
        f"{stack.issuer}/introspect", data={"token": token}, auth=("mcp-resource-server", RS_SECRET)
    ).json()
    assert claims["active"] is True and claims["exp"] - claims["iat"] == 3600
    called = time.time()
    profile = asyncio.run(tool_data(stack.mcp_url, token, "get_user_profile"))
    answered = time.time()
    assert profile["username"] == "bob" and profile["subject"] == "bob"
    assert profile["scopes"] == ["read"] and profile["client_id"] == "mcp-client"
    assert profile["token_expires_at"] == datetime.fromtimestamp(claims["exp"], UTC).isoformat()
    left = profile["token_expires_in"]
    assert int(claims["exp"] - answered) <= left <= int(claims["exp"] - called), (left, claims)


def test_each_user_sees_and_deletes_only_their_own_notes_and_data(stack):
    alice_note = use(stack, "alice", "save_user_note", {"text": "alice's secret"})["saved"]
    admin_note = use(stack, "admin", "save_user_note", {"text": "admin's secret"})["saved"]
    use(stack, "alice", "write_data", {"key": "colour", "value": "green"})
    use(stack, "admin", "write_data", {"key": "colour", "value": "red"})

    def texts(username):
        return {n["text"] for n in use(stack, username, "get_user_notes")["notes"]}

    alice_sees, admin_sees, bob_sees = texts("alice"), texts("admin"), texts("bob")
    assert "alice's secret" in alice_sees and "admin's secret" not in alice_sees
    assert "admin's secret" in admin_sees and "alice's secret" not in admin_sees
    assert not {"alice's secret", "admin's secret"} & bob_sees
    assert use(stack, "alice", "read_data", {"key": "colour"})["records"][0]["value"] == "green"
    assert use(stack, "admin", "read_data", {"key": "colour"})["records"][0]["value"] == "red"
    with pytest.raises(ToolError, match="no record named 'colour'"):
        use(stack, "bob", "read_data", {"key": "colour"})

    for username, note in [("alice", admin_note), ("admin", alice_note)]:
        with pytest.raises(ToolError, match=f"no note with id {note['id']}"):
            use(stack, username, "delete_user_note", {"note_id": note["id"]})
    assert use(stack, "alice", "delete_user_note", {"note_id": alice_note["id"]}) == {
        "deleted": alice_note["id"]
    }
    assert "alice's secret" not in texts("alice") and "admin's secret" in texts("admin")


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "tool", "arguments", "message"),
    [
        ("alice", "write_data", {"key": "", "value": "v"}, "at least 1 character"),
        ("alice", "write_data", {"key": "k" * 101, "value": "v"}, "at most 100 characters"),
        ("alice", "write_data", {"key": "k"}, "value"),
        ("alice", "delete_user_note", {"note_id": "abc"}, "valid integer"),
        ("alice", "save_user_note", {"text": 42}, "valid string"),
        ("admin", "admin_operation", {"action": "drop_tables"}, "list_grants"),
        ("admin", "admin_operation", {"action": "revoke_user"}, "needs the username"),
        ("admin", "admin_operation", {"action": "revoke_user", "username": "zed"}, "unknown"),
        ("alice", "delete_user_note", {"note_id": 2**70}, "note_id: .*less than or equal"),
        ("alice", "delete_user_note", {"note_id": -(2**70)}, "note_id: .*greater than or equal"),
        ("admin", "admin_operation", {"action": "revoke_user", "username": "z" * 256}, "username"),
    ],
)
def test_bad_arguments_are_tool_errors_with_a_clear_message(
    stack, username, tool, arguments, message
):
    with pytest.raises(ToolError, match=message):
        use(stack, username, tool, arguments)
    assert "Traceback" not in stack.rs.output()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"note_id": "abc"},
            "Invalid argument note_id: Input should be a valid integer, "
            "unable to parse string as an integer",
        ),
        ({}, "Invalid argument note_id: Missing required argument"),
        ({"note_id": 1, "extra": "x"}, "Invalid argument extra: Unexpected keyword argument"),
    ],
)
def test_bad_arguments_get_one_sentence_naming_the_argument_not_pydantics_dump(
    stack, arguments, message
):
    answer = result_of(call(stack, "delete_user_note", arguments, stack.token("alice")))
    assert answer["result"]["isError"] is True
    assert answer["result"]["content"][0]["text"] == message


def test_malformed_requests_never_get_a_5xx(stack):
    token = stack.token("alice")
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {token}"}
    for body in [b"{not json", b"[]", b'{"method": 7}', b'"x"', b"1" * 5000]:
        response = httpx.post(stack.mcp_url, content=body, headers=headers)
        assert response.status_code < 500, (body, response.status_code)
    unknown = call(stack, "no_such_tool", {}, token)
    assert unknown.status_code == 200
    assert result_of(unknown)["result"]["isError"] is True
    assert "Unknown tool" in result_of(unknown)["result"]["content"][0]["text"]
    assert call(stack, "no_such_tool").status_code == 401


# -- tokens the server must refuse -----------------------------------------------------------


def test_token_for_another_audience_is_refused_naming_the_audience(stack):
    other = stack.login("alice", resource="http://localhost:8000/mcp")["access_token"]
    no_audience = stack.login("alice", resource=None)["access_token"]
    for token, aud in [(other, "'http://localhost:8000/mcp'"), (no_audience, "None")]:
        response = call(stack, "get_user_profile", {}, token)
        assert response.status_code == 401
        why = f"token audience {aud} is not this server ({stack.mcp_url})"
        assert (
            f'error="invalid_token", error_description="{why}"'
            in (response.headers["WWW-Authenticate"])
        )


def test_refresh_token_is_not_an_access_token(stack):
    refresh = stack.login("alice")["refresh_token"]
    assert call(stack, "get_user_profile", {}, refresh).status_code == 401


def test_revoked_token_stops_working_once_its_cache_entry_ends(stack):
    tokens = stack.login("alice")
    assert call(stack, "get_user_profile", {}, tokens["access_token"]).status_code == 200
    cached_by = time.monotonic()
    revoked = httpx.post(
        f"{stack.issuer}/revoke",
        data={"token": tokens["access_token"], "client_id": "mcp-client"},
    )
    assert revoked.status_code == 200
    assert_refused_within_one_cache_ttl(stack, tokens["access_token"], cached_by)
    assert call(stack, "get_user_profile", {}, tokens["access_token"]).status_code == 401


def test_admin_lists_grants_and_revokes_a_users_tokens(stack):
    stack.token("alice")  # a grant of her own, whichever tests ran before
    bob = stack.token("bob")
    assert call(stack, "get_user_profile", {}, bob).status_code == 200
    cached_by = time.monotonic()
    grants = use(stack, "admin", "admin_operation", {"action": "list_grants"})
    assert {"alice", "bob", "admin"} <= set(grants["users"])
    answer = use(stack, "admin", "admin_operation", {"action": "revoke_user", "username": "bob"})
    assert answer["username"] == "bob" and answer["revoked"] >= 1
    stack.forget("bob")
    assert_refused_within_one_cache_ttl(stack, bob, cached_by)


# -- the provider as a dependency ------------------------------------------------------------


def test_provider_down_means_503_with_retry_after_then_recovery_without_restart(steady):
    cached = steady.login("admin")["access_token"]
    fresh = steady.login("alice")["access_token"]  # never shown to the RS: not cached
    assert call(steady, "get_user_profile", {}, cached).status_code == 200  # cached for an hour
    steady.provider.stop()
    try:
        response = call(steady, "get_user_profile", {}, fresh)
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= 1
        # A token checked before the outage is still served from the cache during it.
        assert call(steady, "get_user_profile", {}, cached).status_code == 200
    finally:
        steady.provider.start()
    deadline = time.monotonic() + 40
    while (response := call(steady, "get_user_profile", {}, fresh)).status_code == 503:
        assert time.monotonic() < deadline, "the RS did not recover after the provider came back"
        time.sleep(min(int(response.headers["Retry-After"]), 2))
    assert response.status_code == 200


def test_concurrent_first_calls_share_one_introspection(steady):
    """The design: one token's checks share one introspection while it is in flight, and its
    answer is cached afterwards (for an hour here), so twenty calls cause exactly one. Whether
    a call found the answer in flight (shared) or already cached (hit) depends on timing, so
    only their sum is asserted."""
    token = steady.login("alice")["access_token"]
    before = steady.metrics()

    async def twenty_calls():
        headers = {
            "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {token}",
        }
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "get_user_profile", "arguments": {}},
        }
        async with httpx.AsyncClient(timeout=30) as http:
            return await asyncio.gather(
                *(http.post(steady.mcp_url, json=body, headers=headers) for _ in range(20))
            )

    responses = asyncio.run(twenty_calls())
    assert [r.status_code for r in responses] == [200] * 20
    after = steady.metrics()
    delta = {name: after[name] - before[name] for name in before if name != "mode"}
    assert delta["introspections"] == 1
    assert delta["cache_misses"] - delta["shared_introspections"] == 1  # the one that asked
    assert delta["cache_hits"] + delta["cache_misses"] == 20
