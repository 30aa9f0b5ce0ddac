"""The fence around what the client takes from FastMCP, the MCP SDK and httpx2 beyond their
public promises (`mcp_oauth/client/sdk_internals.py`). Each test names the piece it checks, so
an upgrade that changes one fails here, saying which, instead of deep inside a sign-in.

Also checked: the client's code uses httpx2 alone, the HTTP library the SDK transports over.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import sys
import threading
import time
from collections.abc import AsyncGenerator, Iterator

import httpx2
import pytest
import uvicorn
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_oauth.client import sdk_internals
from mcp_oauth.client.sdk_internals import (
    FACTORY_OPTIONS,
    TRANSPORT_FAILURES,
    CallToolResult,
    DiscoverFirstTransport,
    mcp_http_client_factory,
)
from tests.support import ROOT, free_port

UPGRADE = "the SDK changed under mcp_oauth/client/sdk_internals.py"


@pytest.fixture(scope="module")
def refusing_server() -> Iterator[str]:
    """An MCP endpoint that answers every request 401, as our resource server does unsigned."""

    async def refuse(request: Request) -> JSONResponse:
        return JSONResponse(
            {"error": "invalid_token"},
            401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    app = Starlette(routes=[Route("/mcp", refuse, methods=["GET", "POST", "DELETE"])])
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test's MCP endpoint did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(10)


class NotingAuth(httpx2.Auth):
    """What session.BearerToken relies on: whether the flow was resumed with an answer."""

    def __init__(self) -> None:
        self.answers: list[int] = []

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        response = yield request
        self.answers.append(response.status_code)


def connect(url: str, auth: httpx2.Auth, factory: object) -> BaseException | None:
    """Open a fastmcp Client session to `url`; what it raised, if anything."""

    async def attempt() -> None:
        transport = StreamableHttpTransport(url, auth=auth, httpx_client_factory=factory)
        async with Client(transport) as client:
            await client.list_tools()

    try:
        asyncio.run(attempt())
    except BaseException as exc:  # noqa: BLE001 — the test inspects whatever came out
        return exc
    return None


def test_call_tool_result_is_what_client_call_tool_returns():
    returned = inspect.signature(Client.call_tool).return_annotation
    if isinstance(returned, str):  # postponed annotations: read the name in fastmcp's module
        returned = vars(sys.modules[Client.__module__]).get(returned, returned)
    assert returned is CallToolResult, (
        f"{UPGRADE}: fastmcp.Client.call_tool now returns {returned!r}, not "
        "fastmcp.client.client.CallToolResult; import the new type there"
    )


def test_the_sdk_still_makes_its_mcp_http_client_the_way_the_factory_expects():
    parameters = set(inspect.signature(sdk_internals.create_mcp_http_client).parameters)
    assert {"headers", "timeout", "auth"} <= parameters, (
        f"{UPGRADE}: mcp.shared._httpx_utils.create_mcp_http_client now takes {parameters}"
    )
    hooks = {"request": [], "response": []}
    client = mcp_http_client_factory(hooks)(follow_redirects=True)
    assert client.timeout.read == 300 and client.timeout.connect == 30, (
        f"{UPGRADE}: the SDK's MCP client timeouts are now {client.timeout}"
    )
    assert not client.follow_redirects, (
        f"{UPGRADE}: the SDK's MCP client now follows redirects itself; recheck the factory"
    )


def test_fastmcp_passes_the_factory_only_the_options_it_takes(refusing_server):
    asked: list[set[str]] = []
    ours = mcp_http_client_factory({})

    def recording(**options: object) -> httpx2.AsyncClient:
        asked.append(set(options))
        return ours(**options)  # type: ignore[arg-type]

    connect(refusing_server, NotingAuth(), recording)
    assert asked, f"{UPGRADE}: StreamableHttpTransport no longer calls httpx_client_factory"
    assert all(options <= FACTORY_OPTIONS for options in asked), (
        f"{UPGRADE}: StreamableHttpTransport now passes the factory {asked}; "
        f"sdk_internals.mcp_http_client_factory takes only {sorted(FACTORY_OPTIONS)}"
    )


def test_a_refusal_reaches_the_caller_as_a_transport_failure_and_the_auth_flow(refusing_server):
    noted = NotingAuth()
    raised = connect(refusing_server, noted, mcp_http_client_factory({}))
    assert isinstance(raised, TRANSPORT_FAILURES), (
        f"{UPGRADE}: a 401 now surfaces from fastmcp.Client as {raised!r}, "
        f"not one of {TRANSPORT_FAILURES}; session.McpSession would not recover from it"
    )
    assert 401 in noted.answers, f"{UPGRADE}: the 401 answer no longer passes the httpx2 Auth"


def test_an_unreachable_server_is_a_transport_failure_and_never_resumes_the_auth_flow():
    noted = NotingAuth()
    raised = connect(f"http://127.0.0.1:{free_port()}/mcp", noted, mcp_http_client_factory({}))
    assert isinstance(raised, TRANSPORT_FAILURES), (
        f"{UPGRADE}: an unreachable server now surfaces from fastmcp.Client as {raised!r}"
    )
    assert noted.answers == [], (
        "httpx2 resumed an Auth flow whose request was never sent; "
        "session.BearerToken.unanswered would be wrong"
    )


class SignInFirst(Exception):
    """What DiscoverFirstTransport's `refusal` hands the SDK in the test below."""


def test_a_refused_discover_probe_ends_the_connection_without_an_initialize(refusing_server):
    """session.McpSession relies on this: a 401 to `server/discover` ends the connection with
    the exception `refusal()` returns (fastmcp wraps it in a RuntimeError, a transport failure
    the session already reads the noted 401 from), and no 2025 `initialize` follows it."""
    noted = NotingAuth()

    async def attempt() -> None:
        transport = DiscoverFirstTransport(
            refusing_server,
            refusal=SignInFirst,
            auth=noted,
            httpx_client_factory=mcp_http_client_factory({}),
        )
        async with Client(transport):
            pass

    with pytest.raises(TRANSPORT_FAILURES) as raised:  # fastmcp: "Client failed to connect"
        asyncio.run(attempt())
    causes = []
    cause: BaseException | None = raised.value
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert any(isinstance(cause, SignInFirst) for cause in causes), (
        f"{UPGRADE}: the refusal no longer ends the connection attempt: {causes!r}"
    )
    assert noted.answers == [401], (
        f"{UPGRADE}: after a refused server/discover the SDK sent {len(noted.answers) - 1} more "
        "requests (the initialize fallback?); ClientSession.send_discover is no longer the "
        "probe's one door, or an exception from it no longer stops negotiate_auto"
    )


def test_the_client_uses_httpx2_alone():
    """One HTTP client library in the client process: the one the MCP SDK transports over."""
    files = [ROOT / "client.py", *sorted((ROOT / "mcp_oauth" / "client").glob("*.py"))]
    users = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.split(".")[0] == "httpx" for name in names):
                users.append(str(path.relative_to(ROOT)))
    assert users == [], f"these client modules import httpx rather than httpx2: {users}"
