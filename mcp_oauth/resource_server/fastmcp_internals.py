"""Every FastMCP / MCP SDK detail the resource server relies on beyond their documented API.

Each is used through this module only, says why it is needed and what would break, and is
checked on its own by tests/test_resource_server_fastmcp_fence.py, so an upgrade of fastmcp
or mcp that changes one fails that test naming the piece, not a tool call somewhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastmcp import FastMCP
from fastmcp.exceptions import ValidationError as FastMCPValidationError
from fastmcp.server.auth import AccessToken
from mcp.client.auth.utils import build_oauth_authorization_server_metadata_discovery_urls
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.routes import cors_middleware
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp_types.methods import SPEC_CLIENT_METHODS
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import ErrorDetails
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Scope

MAX_REQUEST_BODY = DEFAULT_MAX_REQUEST_BODY_SIZE
"""The MCP SDK's own body limit (mcp.server.transport_security): the gate reads the body before
the SDK does, so it refuses what the SDK would refuse, at the same size."""


def warm_state_store(mcp: FastMCP) -> None:
    """Build FastMCP's session state store now, at start.

    `FastMCP._state_store` (private) imports key_value's stores on first use, which would
    otherwise cost the first user's tool call a few hundred milliseconds of imports.
    """
    _ = mcp._state_store


def request_methods(mcp: FastMCP) -> frozenset[str]:
    """Every JSON-RPC request method the MCP SDK may act on for `mcp`: the spec's client methods
    (the SDK checks their params before looking for a handler) and each handler FastMCP
    registered on its SDK server. The SDK answers any other method -32601 (HTTP 404 under
    2026-07-28) without running anything.

    FastMCP keeps its SDK server in the private `_mcp_server`, and the SDK's `Server` lists its
    handlers only in the private `_request_handlers` (its public `get_request_handler` looks up
    one name, and the gate must also recognise other spellings of a name).
    """
    return SPEC_CLIENT_METHODS | mcp._mcp_server._request_handlers.keys()


def attach_verified_token(scope: Scope, access: AccessToken) -> None:
    """Hand the gate's verdict to FastMCP for this request.

    FastMCP's `get_access_token()` (what `current_caller` reads) takes the token from
    `scope["user"]` when it is the MCP SDK's `AuthenticatedUser`; the SDK's own bearer
    middleware sets it the same way. Neither documents this handshake.
    """
    scope["user"] = AuthenticatedUser(access)
    scope["auth"] = AuthCredentials(access.scopes)


def wrap_mcp_route(app: Starlette, path: str, wrap: Callable[[ASGIApp], ASGIApp]) -> None:
    """Put `wrap` around the MCP endpoint itself, so the gate guards exactly what that route
    serves (not the metadata routes, not FastMCP's custom routes).

    Relies on `FastMCP.http_app` serving streamable HTTP as a starlette `Route` at `path`
    whose `.app` is the transport's ASGI handler.
    """
    for route in app.router.routes:
        if isinstance(route, Route) and route.path == path:
            route.app = wrap(route.app)
            return
    raise RuntimeError(
        f"FastMCP.http_app no longer serves {path} as a starlette Route: the OAuth gate "
        "cannot wrap it (see mcp_oauth/resource_server/fastmcp_internals.py)"
    )


def allow_cors(endpoint: Callable[[Request], Awaitable[Response]], methods: list[str]) -> ASGIApp:
    """The MCP SDK's CORS wrapper for its own metadata routes (mcp.server.auth.routes), so
    browser-based MCP clients read our RFC 9728 metadata exactly as they read the SDK's."""
    return cors_middleware(endpoint, methods)


def metadata_discovery_urls(issuer: str) -> list[str]:
    """Where an issuer publishes its metadata, in the order to try: RFC 8414 §3.1 (well-known
    segment between host and issuer path), RFC 8414 §5 path-aware OpenID, then OpenID Connect
    Discovery (appended to the issuer). The MCP SDK's client helper, also used by client.py.
    """
    return build_oauth_authorization_server_metadata_discovery_urls(issuer, issuer)


def argument_errors(exc: Exception) -> list[ErrorDetails] | None:
    """What was wrong with a tool's arguments, one entry per argument (pydantic's `loc` and
    `msg`, without the input echoed or a documentation URL); None for any other error.

    FastMCP raises its `ValidationError` for bad arguments with the message of pydantic's
    ValidationError, raised `from` it: that `__cause__` is the only structured account of
    which argument was wrong, and FastMCP does not document it.
    """
    if not isinstance(exc, FastMCPValidationError):
        return None
    cause = exc.__cause__
    if not isinstance(cause, PydanticValidationError):
        return None
    return cause.errors(include_url=False, include_input=False, include_context=False)
