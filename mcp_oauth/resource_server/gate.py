"""Who may call what on the MCP endpoint, decided in HTTP before FastMCP runs anything.

FastMCP reports a scope denial as a tool error inside an HTTP 200, which no client can step up
from. So an ASGI layer in front of the endpoint reads each JSON-RPC request, looks up what it
needs in the tool/scope table, and answers the way RFC 6750, RFC 9728 and the MCP
authorization spec tell a client what to do next:

- no token where one is needed       → 401, WWW-Authenticate names resource_metadata and scope
- a token that is invalid or revoked → 401 as above, plus error="invalid_token" and the reason
                                       in error_description (also logged; the token never is)
- a valid token without the scope    → 403 error="insufficient_scope" naming the tool's scope
- the provider cannot be asked       → 503 with Retry-After (never a 401: that loops logins)

Anonymous clients may initialize, discover, ping, send notifications, list tools and call
public tools. Everything else needs a valid token; an unknown tool needs one too, so a tool
that escaped the table is never public by accident.

The MCP app runs stateless: every request is judged on its own token. A client that started
anonymously and signs in later, or steps up to a new scope, simply carries on, where a
stateful session bound to its first principal would answer 404 and force a new session.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from enum import Enum
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fastmcp import FastMCP
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.routes import cors_middleware
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from starlette.authentication import AuthCredentials
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_oauth.common.asgi_body import read_body, replay
from mcp_oauth.common.text import printable
from mcp_oauth.resource_server.introspection import CheckingVerifier, TokenRefused
from mcp_oauth.resource_server.provider_discovery import Provider, ProviderUnavailable

log = logging.getLogger(__name__)


class Access(Enum):
    """Requirements that are not a scope."""

    PUBLIC = "no token"
    SIGNED_IN = "any valid token"


PUBLIC = Access.PUBLIC
SIGNED_IN = Access.SIGNED_IN
Requirement = Access | str
"""What a request needs: PUBLIC, SIGNED_IN, or the name of an OAuth scope."""

F = TypeVar("F", bound=Callable[..., Any])

ANONYMOUS_METHODS = frozenset({"initialize", "server/discover", "ping", "tools/list"})


def satisfied(requirement: Requirement, granted: Collection[str] | None) -> bool:
    """Whether a caller with `granted` scopes (None: no valid token) meets `requirement`."""
    if requirement is PUBLIC:
        return True
    if granted is None:
        return False
    return requirement is SIGNED_IN or requirement in granted


class ToolScopes:
    """The tool/scope table: its `tool` decorator registers a FastMCP tool and what it needs."""

    def __init__(self, mcp: FastMCP, scopes: dict[str, str]):
        self.mcp = mcp
        self.scopes = scopes
        """Every scope this server knows, with what it allows (advertised in order)."""
        self.requirements: dict[str, Requirement] = {}

    def tool(self, *, scope: Requirement) -> Callable[[F], F]:
        """Register the decorated function as a tool needing `scope` (or PUBLIC / SIGNED_IN)."""
        if isinstance(scope, str) and scope not in self.scopes:
            raise ValueError(f"unknown scope {scope!r}; known: {', '.join(self.scopes)}")

        def register(fn: F) -> F:
            self.requirements[fn.__name__] = scope  # FastMCP names a tool after its function
            # Published in the tool's _meta too, so any MCP client can show what it needs.
            needs = scope if isinstance(scope, str) else scope.value
            return self.mcp.tool(fn, meta={"required_scope": needs})

        return register

    async def check_complete(self) -> None:
        """Refuse to start when a tool was registered without a requirement."""
        undeclared = {t.name for t in await self.mcp.list_tools()} - self.requirements.keys()
        if undeclared:
            raise RuntimeError(
                f"tools without a scope: {', '.join(sorted(undeclared))}; "
                "register them with @tool(scope=...)"
            )

    def requirement(self, message: Any) -> Requirement:
        """What one decoded JSON-RPC message needs."""
        method = message.get("method") if isinstance(message, dict) else None
        if not isinstance(method, str):
            return PUBLIC  # a response or malformed: the SDK refuses it, nothing runs
        if method == "tools/call":
            params = message.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            return self.requirements.get(name, SIGNED_IN) if isinstance(name, str) else SIGNED_IN
        if method in ANONYMOUS_METHODS or method.startswith("notifications/"):
            return PUBLIC
        return SIGNED_IN

    def describe(self, granted: Collection[str]) -> list[dict[str, Any]]:
        """Each tool, what it needs, and whether a caller with `granted` scopes may call it."""
        return [
            {
                "tool": name,
                "needs": f"scope {need}" if isinstance(need, str) else need.value,
                "allowed": satisfied(need, granted),
            }
            for name, need in self.requirements.items()
        ]


class Challenges:
    """The 401, 403 and 503 answers, each telling the client exactly what to do next."""

    def __init__(self, resource_metadata_url: str, login_scope: str):
        self.resource_metadata_url = resource_metadata_url
        self.login_scope = login_scope
        """Scope asked for when a request needs a user but no particular scope."""

    def unauthorized(self, requirement: Requirement, *, refused: str | None = None) -> Response:
        """401 for a request without a token, or with one refused for the reason `refused`."""
        scope = requirement if isinstance(requirement, str) else self.login_scope
        params = []
        if refused is not None:
            params = [("error", "invalid_token"), ("error_description", refused)]
        params += [("resource_metadata", self.resource_metadata_url), ("scope", scope)]
        description = refused or (
            "This request needs a bearer token: see resource_metadata for where to get one."
        )
        return _bearer_response(401, params, description)

    def forbidden(self, scope: str) -> Response:
        params = [
            ("error", "insufficient_scope"),
            ("scope", scope),
            ("resource_metadata", self.resource_metadata_url),
        ]
        return _bearer_response(403, params, f"This tool needs the {scope!r} scope.")


def _bearer_response(status: int, params: list[tuple[str, str]], description: str) -> Response:
    challenge = "Bearer " + ", ".join(f'{name}="{quotable(value)}"' for name, value in params)
    body = {"error": dict(params).get("error", "unauthorized"), "error_description": description}
    return JSONResponse(body, status, headers={"WWW-Authenticate": challenge})


def quotable(text: str, limit: int = 300) -> str:
    """`text` as an RFC 6750 §3 attribute value. A refusal reason may quote a claim of the
    (untrusted) token; its double quotes become single ones so the reason stays readable."""
    return printable(text.replace('"', "'"), limit)


def unavailable(exc: ProviderUnavailable) -> Response:
    """503 for an authorization server that cannot be asked now."""
    body = {
        "error": "temporarily_unavailable",
        "error_description": "The authorization server cannot be reached; retry later.",
    }
    return JSONResponse(body, 503, headers={"Retry-After": str(exc.retry_after)})


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer` header; None for none or another scheme."""
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
    return None


class OAuthGate:
    """Wraps the MCP endpoint and decides every request to it (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: CheckingVerifier,
        tools: ToolScopes,
        challenges: Challenges,
        max_body: int = DEFAULT_MAX_REQUEST_BODY_SIZE,
    ):
        self.app = app
        self.verifier = verifier
        self.tools = tools
        self.challenges = challenges
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        requirement: Requirement = PUBLIC  # GET and DELETE carry no request to run
        if scope["method"] == "POST":
            body = await read_body(receive, self.max_body)
            if body is None:
                await _json_rpc_error(413, -32600, "Request body too large")(scope, receive, send)
                return
            try:
                message = json.loads(body)
            except (ValueError, RecursionError):
                # Refused here, so nothing the SDK might parse differently slips past the table.
                await _json_rpc_error(400, -32700, "Parse error")(scope, receive, send)
                return
            requirement = self.tools.requirement(message)
            receive = replay(body, receive)

        response = await self._decide(scope, requirement)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _decide(self, scope: Scope, requirement: Requirement) -> Response | None:
        """A challenge for this request, or None to let it through (with its user attached)."""
        token = bearer_token(scope)
        if token is None:
            if requirement is PUBLIC:
                return None
            return self.challenges.unauthorized(requirement)
        try:
            if not token:
                raise TokenRefused("the Authorization header carries an empty bearer token")
            access = await self.verifier.check(token)
        except ProviderUnavailable as exc:
            return unavailable(exc)
        except TokenRefused as refused:
            log.info("Refused a bearer token: %s", refused)
            return self.challenges.unauthorized(requirement, refused=str(refused))
        if not satisfied(requirement, access.scopes):
            assert isinstance(requirement, str)  # PUBLIC and SIGNED_IN are met by any token
            return self.challenges.forbidden(requirement)
        scope["user"] = AuthenticatedUser(access)
        scope["auth"] = AuthCredentials(access.scopes)
        return None


def _json_rpc_error(status: int, code: int, message: str) -> Response:
    return JSONResponse(
        {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}, status
    )


def protected_resource_routes(
    *, resource: str, provider: Provider, scopes: list[str], resource_name: str
) -> list[Route]:
    """RFC 9728 metadata at /.well-known/oauth-protected-resource, with and without the path.

    Served by hand: pydantic's AnyHttpUrl would add a trailing slash to a bare-origin issuer,
    and clients compare `authorization_servers` with the issuer string by string.
    """

    async def metadata(_request: Request) -> Response:
        try:
            issuer = (await provider.metadata()).issuer
        except ProviderUnavailable as exc:
            return unavailable(exc)
        return JSONResponse(
            {
                "resource": resource,
                "authorization_servers": [issuer],
                "scopes_supported": scopes,
                "bearer_methods_supported": ["header"],
                "resource_name": resource_name,
            }
        )

    endpoint = cors_middleware(metadata, ["GET", "OPTIONS"])
    paths = dict.fromkeys(
        [resource_metadata_path(resource), "/.well-known/oauth-protected-resource"]
    )
    return [Route(path, endpoint=endpoint, methods=["GET", "OPTIONS"]) for path in paths]


def resource_metadata_path(resource: str) -> str:
    """RFC 9728 §3.1: the well-known segment goes between the host and the resource's path."""
    return "/.well-known/oauth-protected-resource" + urlsplit(resource).path.rstrip("/")
