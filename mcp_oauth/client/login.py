"""One account's standing with one MCP server: the token it holds and how it gets a better one.

`Login` is asked for the current access token before every request. It refreshes that token
shortly before it expires (rotating refresh tokens: the new one is stored), signs in again
when the server answers 401, and steps up when the server answers 403 insufficient_scope —
asking the provider at most once for any scope, because the provider grants only the scopes
the account is allowed (requested ∩ allowed) and asking again would change nothing.
Everything it learns is written to the token cache, so the next run starts where this one ended.
"""

from __future__ import annotations

import time

import httpx2
from mcp.client.auth.utils import extract_scope_from_www_auth, get_client_metadata_scopes

from mcp_oauth.client.authorization_code import AuthorizationRequest
from mcp_oauth.client.discovery import Discovered, discover
from mcp_oauth.client.errors import ClientError
from mcp_oauth.client.identity import ClientIdentity
from mcp_oauth.client.login_modes import LoginMode
from mcp_oauth.client.token_cache import SavedLogin, TokenCache
from mcp_oauth.client.token_requests import ClientRejected, Endpoints, OAuthErrorResponse, explain
from mcp_oauth.common.scopes import scope_set, scope_str


class NotAllowed(ClientError):
    """The provider would not issue a token with a scope this account needs."""

    def __init__(self, account: str, scope: str, issued: str):
        self.scope = scope
        self.issued = issued
        super().__init__(
            f"{account} is not allowed scope '{scope}' "
            f"(the provider granted: {issued or 'nothing'})",
            "ask the provider's administrator to add it to the account in users.yaml",
        )


class Login:
    """The token of one account at one MCP server, kept usable between requests."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        server_url: str,
        cache: TokenCache,
        mode: LoginMode,
        identity: ClientIdentity,
        account: str,
        scope: str | None = None,
    ):
        self.http = http
        self.account = account
        """Who is signing in, as messages name them (--user, or what the server said)."""
        self.server_url = server_url
        self.cache = cache
        self.mode = mode
        self.identity = identity
        self.scope = scope
        self.saved: SavedLogin | None = cache.load()

    @property
    def access_token(self) -> str | None:
        tokens = self.saved.tokens if self.saved else None
        return tokens.access_token if tokens else None

    def endpoints(self, saved: SavedLogin) -> Endpoints:
        return Endpoints(self.http, saved.metadata, saved.client, saved.resource)

    async def refresh_if_due(self) -> None:
        """Refresh shortly before the access token expires: no request goes out with a dead one."""
        saved = self.saved
        if saved and saved.tokens and saved.refresh_at and time.time() >= saved.refresh_at:
            await self._refresh(saved)

    async def recover(self, challenge: httpx2.Response) -> None:
        """The server refused the token (401): refresh it if the resource still names the
        authorization server that issued it, else sign in again. Credentials are bound to
        their issuer (SEP-2352): when the resource moved to another authorization server,
        neither the old tokens nor the old client id go there; the client signs in anew."""
        found = await discover(self.http, self.server_url, challenge)
        saved = self.saved
        if saved and saved.tokens and saved.metadata.issuer == found.metadata.issuer:
            await self._refresh(saved)
            if self.access_token:
                return
        await self.sign_in(challenge, found)

    async def _refresh(self, saved: SavedLogin) -> None:
        """RFC 6749 §6, rotating: the new refresh token replaces the old one in the cache. A
        refused refresh (expired, revoked) drops the tokens, so the next 401 signs in again."""
        assert saved.tokens is not None
        refresh_token = saved.tokens.refresh_token
        try:
            if refresh_token is None:
                raise OAuthErrorResponse("invalid_grant", "no refresh token was issued")
            saved.store_tokens(await self.endpoints(saved).refresh(refresh_token))
        except OAuthErrorResponse:
            saved.tokens = None
        self.cache.save(saved)

    async def sign_in(self, challenge: httpx2.Response, found: Discovered | None = None) -> None:
        """Discover the provider from the 401 (unless `found` already), pick a client identity,
        and let the user sign in.

        A registration remembered from an earlier run is reused only at the issuer that made it
        (SEP-2352), and may be gone (the provider's database was reset): then the client
        registers anew, once.
        """
        found = found or await discover(self.http, self.server_url, challenge)
        registered = self.saved.client if self.saved else None
        client = await self.identity.resolve(self.http, found.metadata, registered)
        scope = self.scope or get_client_metadata_scopes(
            extract_scope_from_www_auth(challenge),
            found.resource_metadata,
            found.metadata,
            client.grant_types,
        )
        saved = SavedLogin(resource=found.resource, metadata=found.metadata, client=client)
        try:
            await self._authorize(saved, scope)
        except ClientRejected:
            if client is not registered:
                raise
            saved.client = await self.identity.resolve(self.http, found.metadata, None)
            await self._authorize(saved, scope)

    async def step_up(self, challenge: httpx2.Response) -> None:
        """403 insufficient_scope: ask once for what we hold plus what the server wants.

        Raises NotAllowed when the scope was already asked for, or the provider still does not
        grant it — the account is simply not allowed it, and asking again would loop.
        """
        saved = self.saved
        needed = scope_set(extract_scope_from_www_auth(challenge))
        if saved is None or saved.tokens is None:
            raise ClientError("the server wants a scope but no sign-in is held", "sign in again")
        asked = scope_set(saved.requested_scope) | scope_set(saved.issued_scope)
        if not needed <= asked:
            await self._authorize(saved, scope_str(asked | needed))
        missing = needed - scope_set(saved.issued_scope)
        if missing:
            raise NotAllowed(self.account, scope_str(missing), saved.issued_scope)

    async def _authorize(self, saved: SavedLogin, scope: str | None) -> None:
        request = AuthorizationRequest(self.endpoints(saved), scope)
        try:
            tokens = await self.mode.authorize(request)
        except OAuthErrorResponse as failure:
            if failure.error == "invalid_client":
                unknown = explain(failure, "signing in")
                raise ClientRejected(unknown.cause, unknown.fix) from failure
            known = set(saved.metadata.scopes_supported or [])
            if failure.error == "invalid_scope" and scope and scope_set(scope) <= known:
                # requested ∩ allowed = ∅; offline_access (SEP-2207) is no account permission
                lacking = scope_str(scope_set(scope) - {"offline_access"}) or scope
                raise NotAllowed(self.account, lacking, "") from failure
            raise explain(failure, "signing in") from failure
        saved.store_tokens(tokens, requested_scope=scope)
        self.saved = saved
        self.cache.save(saved)

    async def logout(self) -> bool:
        """Revoke both tokens (RFC 7009) and forget them; False when nothing was cached."""
        saved = self.saved
        if saved is None:
            return False
        if saved.tokens is not None:
            endpoints = self.endpoints(saved)
            try:
                if saved.tokens.refresh_token:
                    await endpoints.revoke(saved.tokens.refresh_token, "refresh_token")
                await endpoints.revoke(saved.tokens.access_token, "access_token")
            except OAuthErrorResponse as failure:
                raise ClientError(
                    f"the provider refused to revoke the tokens: {failure}",
                    f"delete {self.cache.path} to forget them; they expire on their own",
                ) from failure
        self.cache.delete()
        self.saved = None
        return True
