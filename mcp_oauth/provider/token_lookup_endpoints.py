"""RFC 7662 introspection and RFC 7009 revocation, answered by the project's own small
handlers: the hottest endpoints of the provider (every resource server's cache miss is one
introspection), and protocols that fit on a page.

Each step is a named rule: client authentication as Authlib's (the methods the endpoint class
in endpoints.py allows; always before the token is looked up), then checks.py's
check_token_parameter, token_is_active and check_token_belongs_to_client, and the endpoint
class's own policy (check_permission, introspect_token, revoke_token). What Authlib's generic
endpoint machinery added per request, and the hop to a worker thread, are gone where they cost
more than the work: on SQLite the client (cached, storage/clients.py) and the token (one
indexed read) are read on the event loop; on PostgreSQL, when the client is cached, the token
is awaited through the async driver, one query for the introspections waiting meanwhile
(storage/async_reader.py). A revocation's write, a client not cached on PostgreSQL, and a
client identified by a metadata document URL (fetched over the network) still run in a
worker thread. A database too busy for the event loop's short wait
(storage/loop_reader.py), or a PostgreSQL that does not answer in time, is answered 503
temporarily_unavailable (AuthorizationServer._run).
"""

from __future__ import annotations

from authlib.consts import default_json_headers
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from mcp_oauth.provider.checks import (
    check_token_belongs_to_client,
    check_token_parameter,
    token_is_active,
)
from mcp_oauth.provider.oauth_request import StarletteOAuth2Request

INACTIVE = {"active": False}


class TokenLookupEndpoints:
    """Introspection and revocation for one AuthorizationServer (its registered endpoints
    carry the rules; this class carries the request through them)."""

    def __init__(self, server):
        self.server = server

    def _endpoint(self, name: str):
        return self.server._endpoints[name][0]  # registered by oauth_provider.py

    def _reads_on_event_loop(self, request: StarletteOAuth2Request) -> bool:
        """Whether the reads of this request are cheap enough for the event loop. Never for
        a client id that names a metadata document (it is fetched over the network). On
        SQLite every read is; on PostgreSQL when the client is cached: its token is then
        awaited through the async driver, and nothing else is read."""
        basic_client_id = (request.basic_credentials or ("",))[0]
        presented = [c for c in (basic_client_id, request.form.get("client_id")) if c]
        if any(self.server.client_documents.identifies(client_id) for client_id in presented):
            return False
        if self.server.store.db.reads_inline:
            return True
        clients = self.server.store.clients
        return bool(presented) and all(clients.is_cached(client_id) for client_id in presented)

    def _authenticated_client(self, request: StarletteOAuth2Request, endpoint):
        """RFC 7662 §2.1 / RFC 7009 §2.1: the client, authenticated by a method the endpoint
        allows (Authlib's), before anything about the token is looked up."""
        return self.server.authenticate_client(
            request, endpoint.CLIENT_AUTH_METHODS, endpoint.ENDPOINT_NAME
        )

    def _client_and_token_in_thread(self, request: StarletteOAuth2Request, endpoint):
        client = self._authenticated_client(request, endpoint)
        return client, self.server.store.tokens.find(check_token_parameter(request.form))

    async def _client_and_token(self, request: StarletteOAuth2Request, endpoint_name: str):
        """The registered endpoint, the authenticated client, and the presented token (None if
        unknown): read on the event loop when the reads may run there (on PostgreSQL the token
        read is awaited), otherwise in a worker thread with the pooled reads."""
        endpoint = self._endpoint(endpoint_name)
        if not self._reads_on_event_loop(request):
            client, token = await run_in_threadpool(
                self._client_and_token_in_thread, request, endpoint
            )
            return endpoint, client, token
        client = self._authenticated_client(request, endpoint)
        token = await self.server.store.tokens.find_async(check_token_parameter(request.form))
        return endpoint, client, token

    # -- RFC 7662 ---------------------------------------------------------------------------

    async def introspect(self, request: StarletteOAuth2Request) -> Response:
        """RFC 7662 §2.1–2.2: an authenticated client; an active token it may see is
        described, anything else is {"active": false}."""
        endpoint, client, token = await self._client_and_token(request, "introspection")
        if token_is_active(token) and endpoint.check_permission(token, client, request):
            answer = endpoint.introspect_token(token)
        else:
            answer = dict(INACTIVE)
        return self.server.handle_response(200, answer, default_json_headers)

    # -- RFC 7009 ---------------------------------------------------------------------------

    async def revoke(self, request: StarletteOAuth2Request) -> Response:
        """RFC 7009 §2.1–2.2: an unknown token is answered 200 like a revoked one; the
        revocation itself is a write, so it runs in a worker thread."""
        endpoint, client, token = await self._client_and_token(request, "revocation")
        if token is not None:
            check_token_belongs_to_client(token, client)
            await run_in_threadpool(endpoint.revoke_token, token, request)
        return self.server.handle_response(200, {}, default_json_headers)
