"""The provider's two bearer-token APIs: the OpenID Connect UserInfo endpoint (/userinfo), and
the On-Behalf-Of demo's downstream API (/api/profile), a resource of its own (RFC 8707).

UserInfo (OIDC Core §5.3) answers the claims the token's identity scopes release
(identity.py), for an access token carrying `openid` issued to the relying party itself (no
`resource`): a token bound to another audience is that audience's, not the relying party's.

The profile API accepts only access tokens whose audience is itself, so a token meant for the
MCP server is refused there and must be exchanged first (RFC 8693, the resource server's
On-Behalf-Of call).
"""

from __future__ import annotations

from authlib.consts import default_json_headers
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_oauth.common.scopes import scope_set
from mcp_oauth.provider.identity import OPENID, user_claims
from mcp_oauth.provider.records import TokenRecord
from mcp_oauth.provider.storage.tokens import TokenStore
from mcp_oauth.provider.token_minter import act_claim
from mcp_oauth.provider.users_file import Account

PROFILE_API_PATH = "/api/profile"
# A user's profile is not for caches (RFC 6750 §5.3 treats responses with tokens alike).
NO_STORE = dict(default_json_headers)


def token_problem(record: TokenRecord | None, audience: str | None) -> str | None:
    """Why a bearer token may not call an API for `audience` (RFC 6750 §3.1 invalid_token),
    or None. The audience None means a token issued for no resource (RFC 8707)."""
    if record is None or record.is_revoked() or record.is_expired():
        return "the token is not active"
    if record.resource != audience:
        return f"the token's audience is not {audience or 'the client itself'}"
    return None


def check_openid_scope(record: TokenRecord) -> str | None:
    """OIDC Core §5.3: UserInfo is for a token granted `openid` about a person; otherwise
    RFC 6750 §3.1 insufficient_scope."""
    if OPENID not in scope_set(record.scope) or not record.username:
        return "the token was not granted the openid scope"
    return None


def refusal(status: int, error: str | None, problem: str, scope: str | None = None) -> Response:
    """RFC 6750 §3: the challenge, with no error code when no token was sent (§3.1)."""
    params = [f'error="{error}"', f'error_description="{problem}"'] if error else []
    if scope:
        params.append(f'scope="{scope}"')
    challenge = "Bearer " + ", ".join(params) if params else "Bearer"
    body = {"error": error or "invalid_request", "error_description": problem}
    return JSONResponse(body, status, {**NO_STORE, "WWW-Authenticate": challenge})


class BearerApi:
    def __init__(self, tokens: TokenStore, accounts: dict[str, Account]):
        self.tokens = tokens
        self.accounts = accounts

    async def bearer(self, request: Request) -> tuple[str | None, TokenRecord | None]:
        """RFC 6750 §2.1: the token of the Authorization header and its record."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, None
        return token.strip(), await run_in_threadpool(self.tokens.find, token.strip(), "access")


class UserInfoEndpoint(BearerApi):
    """OIDC Core §5.3: the claims of the signed-in person, as the token's scopes allow."""

    async def serve(self, request: Request) -> Response:
        token, record = await self.bearer(request)
        if token is None:
            return refusal(401, None, "an access token is required")
        problem = token_problem(record, None)
        if problem:
            return refusal(401, "invalid_token", problem)
        problem = check_openid_scope(record)
        if problem:
            return refusal(403, "insufficient_scope", problem, OPENID)
        account = self.accounts.get(record.username)
        if account is None:
            return refusal(401, "invalid_token", "the token's user no longer exists")
        return JSONResponse(dict(user_claims(account, record.scope)), headers=NO_STORE)


class ProfileApi(BearerApi):
    """The On-Behalf-Of demo's downstream API: tokens for its own audience only."""

    def __init__(self, url: str, tokens: TokenStore, accounts: dict[str, Account]):
        super().__init__(tokens, accounts)
        self.url = url

    async def serve(self, request: Request) -> Response:
        _, record = await self.bearer(request)
        problem = token_problem(record, self.url)
        if problem:
            return refusal(401, "invalid_token", problem)
        account = self.accounts.get(record.username or "")
        body = {
            "sub": record.username or record.client_id,
            "scope": record.scope,
            "client_id": record.client_id,
        }
        if account:
            body.update(
                username=account.username, name=account.name, allowed_scopes=sorted(account.scopes)
            )
        if record.actors:
            body["act"] = act_claim(record.actors)
        return JSONResponse(body, headers=NO_STORE)
