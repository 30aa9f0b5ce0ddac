"""The authorization code flow (RFC 6749 §4.1), whoever walks the provider's pages.

PKCE S256 (RFC 7636), `state`, `resource` (RFC 8707) on the way out; on the way back the
`iss` check (RFC 9207), then `state`, then the code is exchanged with the PKCE verifier. The
browser, the headless sign-in and `headless.obtain_tokens` differ only in the `UserAgent`
that turns the authorization URL into the redirect URL it ends on.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from mcp.client.auth import OAuthFlowError, PKCEParameters
from mcp.client.auth.utils import validate_authorization_response_iss
from mcp.shared.auth import OAuthToken

from mcp_oauth.client.errors import ClientError
from mcp_oauth.client.token_requests import Endpoints, OAuthErrorResponse

UserAgent = Callable[[str], Awaitable[str]]
"""Takes the authorization URL, walks the provider's pages, returns the redirect URL it ends on."""


@dataclass(frozen=True)
class AuthorizationRequest:
    """What to ask for and from whom: one client at one provider, for one resource."""

    endpoints: Endpoints
    scope: str | None


async def authorization_code_flow(
    request: AuthorizationRequest, redirect_uri: str, user_agent: UserAgent
) -> OAuthToken:
    """RFC 6749 §4.1 with PKCE S256, `state`, `resource` and the RFC 9207 `iss` check."""
    endpoints = request.endpoints
    pkce = PKCEParameters.generate()
    state = secrets.token_urlsafe(32)
    params = (
        {
            "response_type": "code",
            "client_id": endpoints.client.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": pkce.code_challenge,
            "code_challenge_method": "S256",
        }
        | endpoints.resource_parameter
        | ({"scope": request.scope} if request.scope else {})
    )
    url = f"{endpoints.metadata.authorization_endpoint}?{urlencode(params)}"
    answer = dict(parse_qsl(urlsplit(await user_agent(url)).query))
    check_issuer(answer.get("iss"), endpoints)
    if answer.get("state") != state:
        raise ClientError(
            "the sign-in answer does not belong to this request (state mismatch)",
            "sign in again from a fresh run; close older sign-in tabs",
        )
    if "error" in answer:  # RFC 6749 §4.1.2.1, in the redirect's query
        raise OAuthErrorResponse(answer["error"], answer.get("error_description"))
    if "code" not in answer:
        raise ClientError("the sign-in answer carries no authorization code", "sign in again")
    return await endpoints.exchange_code(answer["code"], redirect_uri, pkce.code_verifier)


def check_issuer(iss: str | None, endpoints: Endpoints) -> None:
    """RFC 9207 §2.4: the answer's `iss` must be exactly the issuer the request went to (and
    present when the provider says it sends one), else it may be a mix-up attack."""
    try:
        validate_authorization_response_iss(iss, endpoints.metadata)
    except OAuthFlowError as exc:
        raise ClientError(
            f"the sign-in answer names issuer {iss!r}, "
            f"not {endpoints.metadata.issuer} (RFC 9207: a possible mix-up attack)",
            "sign in again, and only through the provider the MCP server names",
        ) from exc
