"""Who may call what on the MCP endpoint, decided in HTTP before FastMCP runs anything.

FastMCP reports a scope denial as a tool error inside an HTTP 200, which no client can step up
from. So an ASGI layer in front of the endpoint reads each JSON-RPC request, looks up what it
needs in the tool/scope table (tool_scopes.py), checks the bearer token with the chosen
verifier (verifier_choice.py) and answers with a challenge (challenges.py) when the request may
not run: 401 without a valid token, 403 without the scope, 503 when the provider cannot be
asked, each a JSON-RPC error object with the request's id (json_rpc.py). A token that cannot
be one (not an RFC 6750 b64token, or too long) is refused before any verifier runs, so junk
never reaches the provider. A refused token's reason is logged; the token never is.

In order: a body over the SDK's limit is 413; one that is not JSON, or repeats a member name,
is 400 -32700 (what is asked cannot be known); then the token is checked against what the
message needs (for a batch, what its calls need); then a batch is 400 -32600, whoever sends it:
2025-06-18 removed JSON-RPC batching from MCP and 2026-07-28 takes one message per POST.

The MCP app runs stateless: every request is judged on its own token. A client that started
anonymously and signs in later, or steps up to a new scope, simply carries on, where a
stateful session bound to its first principal would answer 404 and force a new session.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from mcp_types import INVALID_REQUEST, PARSE_ERROR
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_oauth.common.asgi_body import read_body, replay
from mcp_oauth.resource_server.challenges import Challenges, Refusal, unavailable
from mcp_oauth.resource_server.fastmcp_internals import (
    MAX_REQUEST_BODY,
    attach_verified_token,
    wrap_mcp_route,
)
from mcp_oauth.resource_server.json_rpc import decode, error_response, request_id
from mcp_oauth.resource_server.provider_discovery import Provider, ProviderUnavailable
from mcp_oauth.resource_server.resource_metadata import (
    protected_resource_routes,
    resource_metadata_url,
)
from mcp_oauth.resource_server.tool_scopes import PUBLIC, Requirement, ToolScopes, satisfied
from mcp_oauth.resource_server.verified_token import CheckingVerifier, TokenRefused

log = logging.getLogger(__name__)


MAX_BEARER_TOKEN_BYTES = 8192
"""The longest bearer token checked at all. Our provider's tokens are 43 characters (opaque)
or about 1 KB (JWT); Entra's are 1–3 KB, more with group claims; 8 KiB is the header line a
default nginx passes, so no token a proxied deployment can carry is refused here. It is also
far below the provider's 64 KiB form limit, so a token we forward is never a 413 there."""

B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer` header (RFC 6750 §2.1); None for none or
    another scheme."""
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
    return None


def malformed_token_reason(token: str) -> str | None:
    """Why `token` cannot be a bearer token at all (RFC 6750 §2.1 `b64token`, at most
    MAX_BEARER_TOKEN_BYTES); None when it may be one. Checked before any verifier, so such
    junk never costs a call to the provider nor reaches one as a request it must refuse."""
    if not token:
        return "the Authorization header carries an empty bearer token"
    if len(token) > MAX_BEARER_TOKEN_BYTES:
        return f"the bearer token is longer than {MAX_BEARER_TOKEN_BYTES} bytes"
    if not B64TOKEN.fullmatch(token):
        return "the bearer token has characters RFC 6750 does not allow (b64token)"
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
        max_body: int = MAX_REQUEST_BODY,
    ):
        self.app = app
        self.verifier = verifier
        self.tools = tools
        self.challenges = challenges
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message: Any = None  # GET and DELETE carry no request to run
        if scope["method"] == "POST":
            body = await read_body(receive, self.max_body)
            if body is None:
                too_large = error_response(413, INVALID_REQUEST, "Request body too large")
                await too_large(scope, receive, send)
                return
            try:
                message = decode(body)
            except (ValueError, RecursionError):
                # Refused here, so nothing the SDK might parse differently slips past the table.
                await error_response(400, PARSE_ERROR, "Parse error")(scope, receive, send)
                return
            receive = replay(body, receive)

        refusal = await self._decide(scope, self.tools.requirement(message))
        if refusal is not None:
            await refusal.to_json_rpc(request_id(message))(scope, receive, send)
            return
        if isinstance(message, list):
            batch = "Batches are not accepted: send one JSON-RPC message per POST."
            await error_response(400, INVALID_REQUEST, batch)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _decide(self, scope: Scope, requirement: Requirement) -> Refusal | None:
        """Why this request may not run, or None to let it through (with its token attached)."""
        token = bearer_token(scope)
        if token is None:
            if requirement is PUBLIC:
                return None
            return self.challenges.unauthorized(requirement)
        try:
            if reason := malformed_token_reason(token):
                raise TokenRefused(reason)
            access = await self.verifier.check(token)
        except ProviderUnavailable as exc:
            return unavailable(exc)
        except TokenRefused as refused:
            log.info("Refused a bearer token: %s", refused)
            return self.challenges.unauthorized(requirement, refused=str(refused))
        if not satisfied(requirement, access.scopes):
            assert isinstance(requirement, str)  # PUBLIC and SIGNED_IN are met by any token
            return self.challenges.forbidden(requirement)
        attach_verified_token(scope, access)
        return None


def guard(
    app: Starlette,
    *,
    path: str,
    resource: str,
    verifier: CheckingVerifier,
    tools: ToolScopes,
    provider: Provider,
    login_scope: str,
    resource_name: str,
) -> None:
    """Put the OAuthGate around the MCP endpoint at `path` of FastMCP's `app`, and serve the
    RFC 9728 metadata its challenges point at."""
    challenges = Challenges(resource_metadata_url(resource), login_scope)
    wrap_mcp_route(
        app,
        path,
        lambda endpoint: OAuthGate(endpoint, verifier=verifier, tools=tools, challenges=challenges),
    )
    app.router.routes.extend(
        protected_resource_routes(
            resource=resource,
            provider=provider,
            scopes=list(tools.scopes),
            resource_name=resource_name,
        )
    )
