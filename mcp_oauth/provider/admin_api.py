"""/admin/*: what resource-server clients (an admin tool) may see and do, client-authenticated.

The API's public words stay as clients know them: "grants" here are token families. Its
answers carry Authlib's JSON headers, `Cache-Control: no-store` among them: who holds access
is for no cache to keep.
"""

from __future__ import annotations

import logging

from authlib.oauth2.rfc6749.errors import OAuth2Error
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_oauth.provider.authorization_server import AuthorizationServer

log = logging.getLogger("oauth_provider")


class AdminApi:
    def __init__(self, server: AuthorizationServer):
        self.server = server

    async def _authenticated(self, request: Request):
        """The request's parameters once a resource-server client authenticated, or the
        error response (RFC 6749 §5.2)."""
        try:
            oauth_request = await self.server.oauth2_request(request)
            await run_in_threadpool(self.server.authenticate_resource_server, oauth_request)
        except OAuth2Error as error:
            return None, self.server.error_response(error)
        return oauth_request.payload.data, None

    async def live_grants(self, request: Request) -> Response:
        """Who holds live access: one entry per user's live token family."""
        _, refused = await self._authenticated(request)
        if refused:
            return refused
        families = await run_in_threadpool(self.server.store.tokens.live_families)
        return JSONResponse({"grants": families}, headers=dict(self.server.json_headers))

    async def revoke_user(self, request: Request) -> Response:
        """Revoke every token family of one user."""
        params, refused = await self._authenticated(request)
        if refused:
            return refused
        username = params.get("username", "")
        if username not in self.server.accounts:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "unknown username"},
                400,
                dict(self.server.json_headers),
            )
        revoked = await run_in_threadpool(self.server.store.tokens.revoke_user, username)
        log.info("admin API: revoked %d tokens of %s", revoked, username)
        return JSONResponse(
            {"username": username, "revoked": revoked}, headers=dict(self.server.json_headers)
        )
