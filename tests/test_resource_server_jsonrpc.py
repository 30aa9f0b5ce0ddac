"""The resource server's answers in JSON-RPC, against the real provider over real HTTP.

Refusals speak both languages: the HTTP status and WWW-Authenticate challenge OAuth clients
act on, and a JSON-RPC 2.0 error object with the request's id for MCP clients that read
bodies. Methods behave alike whoever asks: an unknown one is -32601 (HTTP 404 under
2026-07-28, the JSON-RPC error inside a 200 for 2025 requests, as the SDK answers each era),
while no spelling, casing or batching of a guarded tool call reaches it without a token.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx
import pytest
from fastmcp import Client
from mcp.shared.exceptions import MCPError

from mcp_oauth.client.headless import obtain_tokens
from mcp_oauth.resource_server.challenges import (
    AUTHORIZATION_SERVER_UNAVAILABLE,
    SCOPE_REQUIRED,
    TOKEN_REQUIRED,
)
from tests.conftest import RS_SECRET, start_provider, start_resource_server
from tests.support import ServerProcess, free_port

MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}
NEEDS_A_TOKEN = "This request needs a bearer token: see resource_metadata for where to get one."
GUARDED_TOOLS = {
    "get_user_profile": ({}, "read"),  # any valid token: the challenge asks for the login scope
    "list_available_resources": ({}, "read"),
    "read_data": ({}, "read"),
    "get_user_notes": ({}, "read"),
    "get_downstream_profile": ({}, "read"),
    "write_data": ({"key": "anon", "value": "anonymous write"}, "write"),
    "save_user_note": ({"text": "anonymous note"}, "write"),
    "delete_user_note": ({"note_id": 1}, "write"),
    "admin_operation": ({"action": "revoke_user", "username": "alice"}, "admin"),
}
TOOLS_CALL_SPELLINGS = [
    "tools/call",
    "TOOLS/CALL",
    "Tools/Call",
    " tools/call",
    "tools/call\n",
    "tools/\u200bcall",  # a zero-width space
    "\uff54\uff4f\uff4f\uff4c\uff53/\uff43\uff41\uff4c\uff4c",  # fullwidth letters
]


@dataclass
class Stack:
    issuer: str
    mcp_url: str
    rs: ServerProcess
    tokens: dict[str, str]

    @property
    def metadata_url(self) -> str:
        return self.mcp_url.removesuffix("/mcp") + "/.well-known/oauth-protected-resource/mcp"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    tmp = tmp_path_factory.mktemp("rs_jsonrpc")
    port = free_port()
    mcp_url = f"http://127.0.0.1:{port}/mcp"
    provider = start_provider(tmp, resource=mcp_url)
    rs = start_resource_server(
        tmp, port, {"OAUTH_PROVIDER_URL": provider.url, "MCP_RS_CLIENT_SECRET": RS_SECRET}
    )
    passwords = {"alice": "password123", "bob": "secret456"}
    tokens = {
        user: asyncio.run(
            obtain_tokens(provider.url, user, password, scope="read write", resource=mcp_url)
        )["access_token"]
        for user, password in passwords.items()
    }
    yield Stack(provider.url, mcp_url, rs, tokens)
    rs.stop()
    provider.process.stop()


def post(
    url: str, body: object, token: str | None = None, *, modern: bool = False
) -> httpx.Response:
    """One raw POST of `body` (serialised as given), as a 2026-07-28 request when `modern`."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if modern:
        headers["MCP-Protocol-Version"] = MODERN
        method = body.get("method") if isinstance(body, dict) else None
        if isinstance(method, str) and method.isascii() and method.isprintable():
            headers["Mcp-Method"] = method.strip()
        name = body.get("params", {}).get("name") if isinstance(body, dict) else None
        if isinstance(name, str) and name.isascii():
            headers["Mcp-Name"] = name
    content = body if isinstance(body, bytes) else json.dumps(body)
    return httpx.post(url, content=content, headers=headers, timeout=30)


def request(method: str, params: dict | None = None, id_: object = 7, *, modern: bool = False):
    params = dict(params or {})
    if modern:
        params["_meta"] = META
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}


def call(tool: str, arguments: dict, id_: object = 7, *, modern: bool = False, method="tools/call"):
    return request(method, {"name": tool, "arguments": arguments}, id_, modern=modern)


def message_of(response: httpx.Response) -> dict:
    """The JSON-RPC message of a JSON or single-event SSE answer."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return response.json()


def notes_of(stack: Stack, user: str) -> str:
    response = post(stack.mcp_url, call("get_user_notes", {}), stack.tokens[user])
    assert response.status_code == 200, response.text
    return json.dumps(message_of(response)["result"])


# -- refusals in both languages --------------------------------------------------------------


@pytest.mark.parametrize("id_", [7, "call-7", 0])
@pytest.mark.parametrize("modern", [False, True], ids=["2025", "2026-07-28"])
def test_a_401_without_a_token_is_a_json_rpc_error_with_the_request_id(stack, id_, modern):
    response = post(stack.mcp_url, call("read_data", {}, id_, modern=modern))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer resource_metadata="{stack.metadata_url}", scope="read"'
    )
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": id_,
        "error": {
            "code": TOKEN_REQUIRED,
            "message": NEEDS_A_TOKEN,
            "data": {
                "resource_metadata": stack.metadata_url,
                "scope": "read",
                "error_description": NEEDS_A_TOKEN,
            },
        },
    }


@pytest.mark.parametrize("method", ["tools/call", "tools/list"])
def test_a_refused_token_is_a_json_rpc_error_carrying_invalid_token(stack, method):
    response = post(stack.mcp_url, request(method, {"name": "read_data"}, "r-1"), "not-a-token")
    why = f"{stack.issuer} reports the token inactive (expired, revoked or unknown)"
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer error="invalid_token", error_description="{why}", '
        f'resource_metadata="{stack.metadata_url}", scope="read"'
    )
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": "r-1",
        "error": {
            "code": TOKEN_REQUIRED,
            "message": why,
            "data": {
                "error": "invalid_token",
                "error_description": why,
                "resource_metadata": stack.metadata_url,
                "scope": "read",
            },
        },
    }


def test_a_403_is_a_json_rpc_error_naming_the_scope_with_the_request_id(stack):
    bob = stack.tokens["bob"]  # users.yaml lets bob hold read only
    response = post(stack.mcp_url, call("write_data", {"key": "k", "value": "v"}, 42), bob)
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer error="insufficient_scope", scope="write", '
        f'resource_metadata="{stack.metadata_url}"'
    )
    said = "This tool needs the 'write' scope."
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": 42,
        "error": {
            "code": SCOPE_REQUIRED,
            "message": said,
            "data": {
                "error": "insufficient_scope",
                "scope": "write",
                "resource_metadata": stack.metadata_url,
                "error_description": said,
            },
        },
    }


@pytest.mark.parametrize(
    "body",
    [
        {"jsonrpc": "2.0", "method": "notifications/initialized"},  # a notification: no id
        {"jsonrpc": "2.0", "id": None, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": True, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 1.5, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": {"x": 1}, "method": "tools/list"},
        [{"jsonrpc": "2.0", "id": 3, "method": "tools/list"}],  # a batch has no one id
    ],
    ids=["notification", "null", "true", "fraction", "object", "batch"],
)
def test_a_refusal_answers_id_null_only_when_the_request_had_no_readable_id(stack, body):
    response = post(stack.mcp_url, body, "not-a-token")
    assert response.status_code == 401
    assert response.json()["id"] is None
    assert response.json()["error"]["code"] == TOKEN_REQUIRED


def test_the_outage_503_is_a_json_rpc_error_with_the_request_id(tmp_path):
    """A resource server whose provider is not there (nothing listens at its address)."""
    port = free_port()
    rs = start_resource_server(
        tmp_path,
        port,
        {
            "OAUTH_PROVIDER_URL": f"http://127.0.0.1:{free_port()}",
            "MCP_RS_CLIENT_SECRET": RS_SECRET,
        },
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        response = post(url, call("read_data", {}, "outage-1"), "A" * 43)
    finally:
        rs.stop()
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert "WWW-Authenticate" not in response.headers  # never a 401: that loops logins
    said = "The authorization server cannot be reached; retry later."
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": "outage-1",
        "error": {
            "code": AUTHORIZATION_SERVER_UNAVAILABLE,
            "message": said,
            "data": {"error": "temporarily_unavailable", "error_description": said},
        },
    }


def test_the_official_python_sdk_client_reads_the_refusal_from_the_body(stack):
    """The MCP SDK's streamable HTTP client turns a JSON-RPC error body at any status into the
    call's error: bob learns which scope he lacks, not "Server returned an error response"."""

    async def bob_writes():
        async with Client(stack.mcp_url, auth=stack.tokens["bob"]) as client:
            await client.call_tool("write_data", {"key": "k", "value": "v"})

    with pytest.raises(MCPError) as refused:
        asyncio.run(bob_writes())
    assert refused.value.error.code == SCOPE_REQUIRED
    assert refused.value.error.message == "This tool needs the 'write' scope."
    assert refused.value.error.data["error"] == "insufficient_scope"


def test_an_unparseable_body_answers_id_null(stack):
    unparseable = post(stack.mcp_url, b'{"jsonrpc": "2.0", "id": 5, "method": ')
    assert unparseable.status_code == 400
    assert unparseable.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "Parse error"},
    }


# -- methods: the same answer whoever asks ---------------------------------------------------


@pytest.mark.parametrize("method", ["no/such", "TOOLS/LIST", "tools/list/extra", "ping"])
@pytest.mark.parametrize("user", [None, "bob"])
def test_an_unknown_method_is_32601_with_404_under_2026_07_28_whoever_asks(stack, method, user):
    """`ping` is gone from 2026-07-28; TOOLS/LIST is not tools/list."""
    token = stack.tokens[user] if user else None
    response = post(stack.mcp_url, request(method, id_="m-1", modern=True), token, modern=True)
    assert response.status_code == 404, response.text
    assert response.json()["id"] == "m-1"
    assert response.json()["error"]["code"] == -32601


@pytest.mark.parametrize("user", [None, "bob"])
def test_an_unknown_method_of_a_2025_request_is_32601_in_its_answer_whoever_asks(stack, user):
    """The 2025 transports carry a request's JSON-RPC error inside the 200 (as the SDK does)."""
    token = stack.tokens[user] if user else None
    response = post(stack.mcp_url, request("no/such", id_=8), token)
    assert response.status_code == 200
    assert message_of(response) == {
        "jsonrpc": "2.0",
        "id": 8,
        "error": {"code": -32601, "message": "Method not found", "data": "no/such"},
    }


@pytest.mark.parametrize(
    ("method", "modern"), [("tools/list", False), ("tools/list", True), ("server/discover", True)]
)
def test_anonymous_listing_methods_answer_as_they_do_for_a_signed_in_user(stack, method, modern):
    anonymous = post(stack.mcp_url, request(method, modern=modern), modern=modern)
    signed_in = post(
        stack.mcp_url, request(method, modern=modern), stack.tokens["bob"], modern=modern
    )
    assert anonymous.status_code == signed_in.status_code == 200
    assert message_of(anonymous) == message_of(signed_in)


# -- no tool call without a token, however it is spelled or wrapped ---------------------------


@pytest.mark.parametrize("modern", [False, True], ids=["2025", "2026-07-28"])
@pytest.mark.parametrize("method", TOOLS_CALL_SPELLINGS, ids=repr)
def test_every_spelling_of_a_guarded_tool_call_without_a_token_is_401(stack, method, modern):
    for tool, (arguments, scope) in GUARDED_TOOLS.items():
        body = call(tool, arguments, modern=modern, method=method)
        response = post(stack.mcp_url, body, modern=modern)
        assert response.status_code == 401, (tool, response.text)
        assert f'scope="{scope}"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("modern", [False, True], ids=["2025", "2026-07-28"])
def test_a_guarded_tool_call_in_a_batch_without_a_token_is_401(stack, modern):
    public = call("public_info", {}, 1, modern=modern)
    listing = request("tools/list", id_=2, modern=modern)
    for tool, (arguments, scope) in GUARDED_TOOLS.items():
        guarded = call(tool, arguments, 3, modern=modern)
        for batch in ([guarded], [public, guarded], [listing, public, guarded]):
            response = post(stack.mcp_url, batch, modern=modern)
            assert response.status_code == 401, (tool, response.text)
            assert f'scope="{scope}"' in response.headers["WWW-Authenticate"]
            assert response.json()["id"] is None


@pytest.mark.parametrize(
    "name", ["Write_Data", "WRITE_DATA", " write_data", "write_data\u200b", "\uff57rite_data"]
)
def test_a_tool_name_spelled_differently_needs_what_the_tool_needs(stack, name):
    anonymous = post(stack.mcp_url, call(name, {"key": "k", "value": "v"}))
    assert anonymous.status_code == 401
    assert 'scope="write"' in anonymous.headers["WWW-Authenticate"]
    bob = post(stack.mcp_url, call(name, {"key": "k", "value": "v"}), stack.tokens["bob"])
    assert bob.status_code == 403, bob.text
    assert 'scope="write"' in bob.headers["WWW-Authenticate"]


@pytest.mark.parametrize("modern", [False, True], ids=["2025", "2026-07-28"])
def test_a_batch_never_runs_whoever_sends_it(stack, modern):
    marker = f"batched-{modern}"
    save = call("save_user_note", {"text": marker}, 1, modern=modern)
    for batch in ([save], [save, call("get_user_notes", {}, 2, modern=modern)], []):
        response = post(stack.mcp_url, batch, stack.tokens["alice"], modern=modern)
        assert response.status_code == 400, response.text
        assert response.json() == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": -32600,
                "message": "Batches are not accepted: send one JSON-RPC message per POST.",
            },
        }
    public_only = [call("public_info", {}, 1, modern=modern)]
    assert post(stack.mcp_url, public_only, modern=modern).status_code == 400
    assert marker not in notes_of(stack, "alice")


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "method": "tools/call",'
        b' "params": {"name": "save_user_note", "arguments": {"text": "duplicated"}}}',
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "public_info",'
        b' "name": "save_user_note", "arguments": {"text": "duplicated"}}}',
    ],
    ids=["method", "tool name"],
)
def test_a_member_named_twice_is_refused_before_anything_runs(stack, body):
    """Which of two `method` or `name` members counts differs between JSON parsers: the gate
    reads none of them, so no parser can run what the gate did not judge."""
    for token in (None, stack.tokens["alice"]):
        response = post(stack.mcp_url, body, token)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == -32700
    assert "duplicated" not in notes_of(stack, "alice")
