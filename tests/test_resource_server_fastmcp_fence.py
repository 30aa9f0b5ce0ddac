"""The fence around FastMCP / MCP SDK details (mcp_oauth/resource_server/fastmcp_internals.py).

Each detail the resource server relies on beyond the documented API is checked here on its
own, so when an upgrade of fastmcp or mcp changes one, the failing test names the piece and
what it is for, instead of a tool call failing somewhere in the integration suite. Imports of
the fence module happen inside the tests: a vanished SDK name fails its own test below, not
the collection of this file.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import version

import pytest
from fastmcp import FastMCP
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

VERSIONS = f"fastmcp {version('fastmcp')}, mcp {version('mcp')}"
FENCE = "mcp_oauth/resource_server/fastmcp_internals.py"

SDK_NAMES = [
    ("mcp.server.auth.middleware.bearer_auth", "AuthenticatedUser", "attach_verified_token"),
    ("mcp.server.auth.routes", "cors_middleware", "allow_cors"),
    ("mcp.server.transport_security", "DEFAULT_MAX_REQUEST_BODY_SIZE", "MAX_REQUEST_BODY"),
    ("fastmcp.exceptions", "ValidationError", "argument_errors"),
    ("mcp_types.methods", "SPEC_CLIENT_METHODS", "request_methods"),
    (
        "mcp.client.auth.utils",
        "build_oauth_authorization_server_metadata_discovery_urls",
        "metadata_discovery_urls",
    ),
]


@pytest.mark.parametrize(("module", "name", "used_by"), SDK_NAMES, ids=[n for _, n, _ in SDK_NAMES])
def test_sdk_name_the_fence_imports_still_exists(module: str, name: str, used_by: str) -> None:
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{module}.{name} is gone in {VERSIONS} ({exc!r}); {FENCE}:{used_by} needs it")


def test_state_store_is_still_a_lazy_private_property() -> None:
    from mcp_oauth.resource_server.fastmcp_internals import warm_state_store

    found = inspect.getattr_static(FastMCP, "_state_store", None)
    assert isinstance(found, property), (
        f"FastMCP._state_store is no longer a property in {VERSIONS}: {FENCE}:warm_state_store "
        "warms nothing; find where FastMCP now builds its session state store, or drop the warm-up"
    )
    server = FastMCP("fence")
    assert server._state_storage is None, (
        f"FastMCP builds its state store eagerly in {VERSIONS}: drop {FENCE}:warm_state_store"
    )
    warm_state_store(server)
    assert server._state_storage is not None, (
        f"reading FastMCP._state_store no longer builds the store in {VERSIONS}: "
        f"{FENCE}:warm_state_store warms nothing"
    )


def test_http_app_serves_mcp_as_a_route_the_gate_can_wrap() -> None:
    from mcp_oauth.resource_server.fastmcp_internals import wrap_mcp_route

    app = FastMCP("fence").http_app(path="/mcp", stateless_http=True)
    wrapped = []
    try:
        wrap_mcp_route(app, "/mcp", lambda endpoint: wrapped.append(endpoint) or endpoint)
    except RuntimeError as exc:
        pytest.fail(f"{VERSIONS}: {exc}")
    assert len(wrapped) == 1


def test_a_tool_sees_the_token_the_gate_attached() -> None:
    """The gate's handshake with FastMCP: scope["user"] read by get_access_token()."""
    from mcp_oauth.resource_server.caller import current_caller
    from mcp_oauth.resource_server.fastmcp_internals import attach_verified_token, wrap_mcp_route
    from mcp_oauth.resource_server.verified_token import VerifiedToken

    server = FastMCP("fence")

    @server.tool
    def whoami() -> dict:
        caller = current_caller()
        return {"subject": caller.subject, "scopes": sorted(caller.scopes)}

    verified = VerifiedToken("client", ["read"], "alice", None, "http://testserver/mcp", {})

    def gate(endpoint):
        async def attach(scope, receive, send):
            attach_verified_token(scope, verified.access_token("the-token"))
            await endpoint(scope, receive, send)

        return attach

    app = server.http_app(path="/mcp", stateless_http=True, json_response=True)
    wrap_mcp_route(app, "/mcp", gate)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    call["params"] = {"name": "whoami", "arguments": {}}
    with TestClient(app) as client:
        response = client.post(
            "/mcp", json=call, headers={"Accept": "application/json, text/event-stream"}
        )
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert not result.get("isError"), (
        f"FastMCP's get_access_token() no longer reads the token {FENCE}:attach_verified_token "
        f"puts in scope['user'] ({VERSIONS}): {result}"
    )
    assert result["structuredContent"] == {"subject": "alice", "scopes": ["read"]}


def test_request_methods_are_all_the_sdk_acts_on() -> None:
    """The gate lets a method outside request_methods() through without a token, trusting the
    SDK to answer it -32601 without running anything; and it must see FastMCP's handlers."""
    from mcp_oauth.resource_server.fastmcp_internals import request_methods

    server = FastMCP("fence")

    @server.tool
    def anything() -> str:
        return "ran"

    try:
        methods = request_methods(server)
    except AttributeError as exc:
        pytest.fail(f"FastMCP or the SDK no longer keeps its handlers where {FENCE} looks: {exc}")
    assert {"tools/call", "tools/list", "server/discover", "resources/read"} <= methods, (
        f"{FENCE}:request_methods misses methods FastMCP serves in {VERSIONS}: {sorted(methods)}"
    )
    app = server.http_app(path="/mcp", stateless_http=True, json_response=True)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
    }
    with TestClient(app) as client:
        for method in ["tools/Call", "no/such"]:
            assert method not in methods
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"_meta": meta}}
            body["params"]["name"] = "anything"
            response = client.post("/mcp", json=body, headers={**headers, "Mcp-Method": method})
            assert (response.status_code, response.json()["error"]["code"]) == (404, -32601), (
                f"{VERSIONS} answers {method!r}, a method outside {FENCE}:request_methods, "
                f"with {response.status_code} {response.text}"
            )


def test_sdk_cors_wrapper_answers_preflight_and_get() -> None:
    from mcp_oauth.resource_server.fastmcp_internals import allow_cors

    async def document(_request: Request) -> JSONResponse:
        return JSONResponse({"resource": "x"})

    endpoint = allow_cors(document, ["GET", "OPTIONS"])
    app = Starlette(routes=[Route("/m", endpoint=endpoint, methods=["GET", "OPTIONS"])])
    with TestClient(app) as client:
        preflight = client.options(
            "/m",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "GET"},
        )
        got = client.get("/m", headers={"Origin": "http://app.example"})
    message = f"the MCP SDK's cors_middleware changed in {VERSIONS} ({FENCE}:allow_cors)"
    assert preflight.status_code == 200, message
    assert got.json() == {"resource": "x"}, message
    assert got.headers.get("access-control-allow-origin") == "*", message


def test_sdk_body_limit_is_a_positive_size() -> None:
    from mcp_oauth.resource_server.fastmcp_internals import MAX_REQUEST_BODY

    assert isinstance(MAX_REQUEST_BODY, int) and MAX_REQUEST_BODY > 0, (
        f"DEFAULT_MAX_REQUEST_BODY_SIZE changed meaning in {VERSIONS} ({FENCE}:MAX_REQUEST_BODY)"
    )


def test_sdk_discovery_urls_insert_the_issuer_path_then_fall_back_to_openid() -> None:
    """RFC 8414 §3.1 first (the provider's own metadata), OpenID Connect Discovery last."""
    from mcp_oauth.resource_server.fastmcp_internals import metadata_discovery_urls

    message = f"the MCP SDK's discovery URL order changed in {VERSIONS} ({FENCE})"
    assert metadata_discovery_urls("https://sso.example/realms/x") == [
        "https://sso.example/.well-known/oauth-authorization-server/realms/x",
        "https://sso.example/.well-known/openid-configuration/realms/x",
        "https://sso.example/realms/x/.well-known/openid-configuration",
    ], message
    assert metadata_discovery_urls("http://localhost:9000") == [
        "http://localhost:9000/.well-known/oauth-authorization-server",
        "http://localhost:9000/.well-known/openid-configuration",
    ], message


def test_bad_tool_arguments_raise_fastmcps_validation_error_from_pydantics() -> None:
    """ShortArgumentErrors reads which argument was wrong from the pydantic error FastMCP's
    ValidationError is raised from; without it, callers get pydantic's dump again."""
    import asyncio

    from fastmcp import Client

    from mcp_oauth.resource_server.argument_errors import ShortArgumentErrors

    server = FastMCP("fence", middleware=[ShortArgumentErrors()])

    @server.tool
    def delete_note(note_id: int) -> int:
        return note_id

    async def bad_call() -> str:
        async with Client(server) as client:
            result = await client.call_tool("delete_note", {"note_id": "x"}, raise_on_error=False)
            return result.content[0].text

    assert asyncio.run(bad_call()) == (
        "Invalid argument note_id: Input should be a valid integer, "
        "unable to parse string as an integer"
    ), (
        f"FastMCP's ValidationError for bad arguments is no longer raised from pydantic's in "
        f"{VERSIONS} ({FENCE}:argument_errors)"
    )
