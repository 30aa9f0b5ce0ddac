"""Authlib's framework-agnostic AuthorizationServer, bound to Starlette.

Authlib ships server integrations only for Flask and Django. Here the awaited request
(query string and form body) becomes an Authlib OAuth2Request (oauth_request.py), Authlib's
synchronous grant and endpoint code runs in a worker thread (it talks to the database) or,
for the grants that may (RUNS_ON_EVENT_LOOP in grants.py), on the event loop in a greenlet
that awaits the database (sync_on_loop.py), and its (status, body, headers) answer becomes a
Starlette response. Which grants and endpoints it serves is decided in oauth_provider.py, with
register_grant and register_endpoint.
"""

from __future__ import annotations

import inspect

from authlib.consts import default_json_headers
from authlib.oauth2 import AuthorizationServer as AuthlibAuthorizationServer
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError, OAuth2Error
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from mcp_oauth.provider.checks import basic_credentials, client_secret_basic
from mcp_oauth.provider.client_checks import document_metadata
from mcp_oauth.provider.client_documents import ClientDocuments
from mcp_oauth.provider.identity import SCOPE_CLAIMS, OpenIDCode
from mcp_oauth.provider.json_endpoints import JsonAnswer
from mcp_oauth.provider.oauth_request import (
    StarletteOAuth2Request,
    read_json_request,
    read_parameters,
)
from mcp_oauth.provider.records import CONFIDENTIAL_AUTH, ClientRecord
from mcp_oauth.provider.scope_policy import OFFLINE_ACCESS
from mcp_oauth.provider.storage.loop_reader import DatabaseBusy
from mcp_oauth.provider.storage.store import Store
from mcp_oauth.provider.sync_on_loop import off_loop, run_sync
from mcp_oauth.provider.token_lookup_endpoints import TokenLookupEndpoints
from mcp_oauth.provider.token_minter import TokenMinter
from mcp_oauth.provider.users_file import UsersFile

RETRY_AFTER_SECONDS = 1


def authlib_refused_error_text(exc: ValueError) -> bool:
    """Whether this ValueError is Authlib's OAuth2Error refusing a description that holds
    characters RFC 6749 §5.2 forbids (it echoes request values, e.g. an unknown grant_type
    with a quote). Only that case is a bad request; any other ValueError is a bug (a 500).
    The test suite checks that Authlib still refuses this way (test_provider_errors.py)."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_code is OAuth2Error.__init__.__code__


class TemporarilyUnavailableError(OAuth2Error):
    """RFC 6749 §4.1.2.1's temporarily_unavailable, as an HTTP 503 with Retry-After (RFC 9110
    §10.2.3): the database is briefly locked or unreachable; the request may be repeated as
    it is."""

    error = "temporarily_unavailable"
    status_code = 503

    def get_headers(self):
        return [*super().get_headers(), ("Retry-After", str(RETRY_AFTER_SECONDS))]


class AuthorizationServer(AuthlibAuthorizationServer):
    """The Authlib server with the hooks it asks of a framework, plus what oauth_provider.py
    registers kept readable (`grants`, `endpoints`) so the metadata can be derived from it."""

    json_headers = default_json_headers

    def __init__(
        self,
        issuer_url: str,
        users: UsersFile,
        store: Store,
        minter: TokenMinter,
        client_documents: ClientDocuments,
    ):
        super().__init__(scopes_supported=users.scopes)
        self.issuer_url = issuer_url
        self.accounts = users.accounts
        self.resources = users.resources
        # No self-registered client may take a name like these (client_checks.py).
        self.operator_client_names = [
            name for client in users.clients for name in (client.client_id, client.client_name)
        ]
        self.store = store
        self.minter = minter
        self.client_documents = client_documents
        self.grants: list[tuple[type, list]] = []
        self.endpoints: list[type] = []
        self.metadata: dict = {}  # set by oauth_provider.py once the routes are known
        self.token_lookups = TokenLookupEndpoints(self)
        self.register_client_auth_method("client_secret_basic", client_secret_basic)

    def register_grant(self, grant_cls, extensions=None) -> None:
        """A server that issues refresh tokens honours `offline_access` (SEP-2207), and one
        that issues ID tokens the identity scopes, so it lists them in scopes_supported
        (scope_policy.py)."""
        super().register_grant(grant_cls, extensions)
        self.grants.append((grant_cls, list(extensions or [])))
        if grant_cls.GRANT_TYPE == "refresh_token":
            self.support_scopes([OFFLINE_ACCESS])
        if any(isinstance(extension, OpenIDCode) for extension in extensions or []):
            self.support_scopes(SCOPE_CLAIMS)

    def support_scopes(self, scopes) -> None:
        self.scopes_supported = list(dict.fromkeys([*self.scopes_supported, *scopes]))

    @property
    def issues_id_tokens(self) -> bool:
        return any(
            isinstance(extension, OpenIDCode)
            for _, extensions in self.grants
            for extension in extensions
        )

    def register_endpoint(self, endpoint) -> None:
        super().register_endpoint(endpoint)
        self.endpoints.append(endpoint if isinstance(endpoint, type) else type(endpoint))

    # -- the hooks Authlib asks a framework integration for -------------------------------

    def query_client(self, client_id: str) -> ClientRecord | None:
        """A registered client, or one identified by its metadata document (a URL)."""
        client = self.store.clients.get(client_id)
        if client is None and self.client_documents.identifies(client_id):
            # fetched over the network when not cached: never on the event loop
            return off_loop(self.client_documents.client, client_id, self.client_from_document)
        return client

    def client_from_document(self, url: str, document: object) -> ClientRecord:
        metadata = document_metadata(
            url, document, self.scopes_supported, self.operator_client_names
        )
        return ClientRecord(url, None, metadata, identified_by_url=True)

    def save_token(self, token, request):  # every grant here stores its own tokens
        raise NotImplementedError

    def create_oauth2_request(self, request):
        return request  # already built from the awaited Starlette request

    def create_json_request(self, request):
        return request

    def handle_response(self, status: int, body, headers) -> Response:
        if isinstance(body, dict):
            return JsonAnswer(status, body, headers or ())
        return Response(body or b"", status_code=status, headers=dict(headers or []))

    def send_signal(self, name: str, *args, **kwargs) -> None:
        pass

    def error_response(self, error: OAuth2Error) -> Response:
        return self.handle_response(*error())

    # -- request adapters -----------------------------------------------------------------

    async def oauth2_request(self, request: Request) -> StarletteOAuth2Request:
        basic = basic_credentials(request.headers)  # a malformed header is refused first
        items = await read_parameters(request)
        # The routed path itself: building request.url for it costs more than the lookup.
        return self.make_request(request.method, request.scope["path"], request, items, basic)

    def make_request(
        self,
        method: str,
        path: str,
        request: Request,
        items: list[tuple[str, str]],
        basic: tuple[str, str] | None = None,
    ) -> StarletteOAuth2Request:
        """An Authlib request of the issuer's `path`; `basic`, the request's Basic
        credentials, for the endpoints that authenticate clients."""
        return StarletteOAuth2Request(
            method, f"{self.issuer_url}{path}", request.headers, items, basic
        )

    # -- endpoints served as JSON ----------------------------------------------------------

    async def token_endpoint(self, request: Request) -> Response:
        return await self._run(request, self.oauth2_request, self.answer_token_request)

    async def answer_token_request(self, oauth_request: StarletteOAuth2Request) -> Response:
        """Authlib's token endpoint: on the event loop for a grant that may run there, in a
        worker thread otherwise."""
        if self.grant_runs_on_event_loop(oauth_request):
            return await run_sync(self.create_token_response, oauth_request)
        return await run_in_threadpool(self.create_token_response, oauth_request)

    def grant_runs_on_event_loop(self, oauth_request: StarletteOAuth2Request) -> bool:
        """Whether the grant this token request asks for opted in to the event loop (grants.py:
        each of its storage calls reads inline, or awaits its write, never blocks)."""
        for grant_cls, _ in self.grants:
            if grant_cls.check_token_endpoint(oauth_request):
                return getattr(grant_cls, "RUNS_ON_EVENT_LOOP", False)
        return False

    async def introspection_endpoint(self, request: Request) -> Response:
        return await self._run(request, self.oauth2_request, self.token_lookups.introspect)

    async def revocation_endpoint(self, request: Request) -> Response:
        return await self._run(request, self.oauth2_request, self.token_lookups.revoke)

    async def device_authorization_endpoint(self, request: Request) -> Response:
        return await self._endpoint(request, "device_authorization")

    async def registration_endpoint(self, request: Request) -> Response:
        return await self._run(
            request, read_json_request, self.create_endpoint_response, "client_registration"
        )

    async def _endpoint(self, request: Request, name: str) -> Response:
        return await self._run(request, self.oauth2_request, self.create_endpoint_response, name)

    async def _run(self, request: Request, read, handler, *args) -> Response:
        """Read the request (`read`), let `handler` answer it: Authlib's, in a worker thread;
        a coroutine (token_lookup_endpoints.py, answer_token_request) decides itself what
        leaves the event loop. An OAuth error is answered as its RFC says; a database that is
        busy or unreachable, 503 (an outage is never the client's fault)."""
        try:
            oauth_request = await read(request)
            if inspect.iscoroutinefunction(handler):
                return await handler(*args, oauth_request)
            return await run_in_threadpool(handler, *args, oauth_request)
        except OAuth2Error as error:
            return self.error_response(error)
        except (DatabaseBusy, OperationalError):
            return self.error_response(
                TemporarilyUnavailableError("the database is unavailable; try again")
            )
        except ValueError as exc:
            if not authlib_refused_error_text(exc):
                raise
            return self.error_response(
                InvalidRequestError("a value contains characters that are not allowed")
            )

    def authenticate_resource_server(self, oauth_request: StarletteOAuth2Request) -> ClientRecord:
        """Client authentication for the admin API: only resource-server clients pass."""
        client = self.authenticate_client(oauth_request, CONFIDENTIAL_AUTH, "admin")
        if not client.resource_server:
            raise InvalidClientError(
                status_code=403, description="only resource-server clients may use this API"
            )
        return client
