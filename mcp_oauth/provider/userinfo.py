"""/userinfo: the provider's own small downstream API, a resource of its own (RFC 8707).

It accepts only access tokens whose audience is itself, so a token meant for the MCP server is
refused here and must be exchanged first (RFC 8693, the resource server's On-Behalf-Of call).
"""

from __future__ import annotations

from authlib.consts import default_json_headers
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_oauth.provider.records import TokenRecord
from mcp_oauth.provider.storage.tokens import TokenStore
from mcp_oauth.provider.token_minter import act_claim
from mcp_oauth.provider.users_file import Account

# A user's profile is not for caches (RFC 6750 §5.3 treats responses with tokens alike).
NO_STORE = dict(default_json_headers)


def token_problem(record: TokenRecord | None, audience: str) -> str | None:
    """Why a bearer token may not call this API (RFC 6750 §3.1 invalid_token), or None."""
    if record is None or record.is_revoked() or record.is_expired():
        return "the token is not active"
    if record.resource != audience:
        return f"the token's audience is not {audience}"
    return None


class Userinfo:
    def __init__(self, url: str, tokens: TokenStore, accounts: dict[str, Account]):
        self.url = url
        self.tokens = tokens
        self.accounts = accounts

    async def serve(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        record = None
        if scheme.lower() == "bearer" and token.strip():
            record = await run_in_threadpool(self.tokens.find, token.strip(), "access")
        problem = token_problem(record, self.url)
        if problem:
            challenge = f'Bearer error="invalid_token", error_description="{problem}"'
            return JSONResponse(
                {"error": "invalid_token", "error_description": problem},
                401,
                {**NO_STORE, "WWW-Authenticate": challenge},
            )
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
