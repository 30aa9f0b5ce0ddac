"""Authlib's framework-agnostic AuthorizationServer, bound to Starlette.

Authlib ships server integrations only for Flask and Django. Here the awaited request
(query string and form body) becomes an Authlib OAuth2Request, Authlib's synchronous
grant and endpoint code runs in a worker thread (it talks to the database), and its
(status, body, headers) answer becomes a Starlette response.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import unquote

from authlib.consts import default_json_headers
from authlib.oauth2 import AuthorizationServer as AuthlibAuthorizationServer
from authlib.oauth2.rfc6749 import JsonPayload, JsonRequest, OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError, OAuth2Error
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_oauth.common.text import printable
from mcp_oauth.provider.grants import register_grants_and_endpoints
from mcp_oauth.provider.records import ClientRecord
from mcp_oauth.provider.storage import Store
from mcp_oauth.provider.token_minter import TokenIssuer
from mcp_oauth.provider.users_file import Account, Resource

log = logging.getLogger("oauth_provider")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

GRANT_TYPES = [
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:token-exchange",
]


class FormPayload(OAuth2Payload):
    """Parameters of one request: the query string for GET, the form body for POST."""

    def __init__(self, items: list[tuple[str, str]]):
        self.items = items
        self._datalist: defaultdict[str, list] = defaultdict(list)
        for key, value in items:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list]:
        return self._datalist


class StarletteOAuth2Request(OAuth2Request):
    def __init__(self, method: str, uri: str, headers, items: list[tuple[str, str]]):
        super().__init__(method=method, uri=uri, headers=headers)
        self.payload = FormPayload(items)
        self.resource: str | None = None

    @property
    def args(self) -> dict:
        return self.payload.data if self.method == "GET" else {}

    @property
    def form(self) -> dict:
        return self.payload.data if self.method == "POST" else {}


class _Json(JsonPayload):
    def __init__(self, data: dict):
        self._data = data

    @property
    def data(self) -> dict:
        return self._data


async def read_parameters(request: Request) -> list[tuple[str, str]]:
    """The OAuth parameters of a request, rejecting what RFC 6749 §3.1/§3.2 does not allow:
    a body that is not a form, values that are files, and any parameter sent twice."""
    if request.method == "GET":
        items = list(request.query_params.multi_items())
    else:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise InvalidRequestError("the body must be application/x-www-form-urlencoded")
        try:
            form: FormData = await request.form()
        except Exception as exc:  # malformed body: the parser's message is not for users
            raise InvalidRequestError("the form body could not be parsed") from exc
        items = list(form.multi_items())
    seen: set[str] = set()
    for key, value in items:
        if not isinstance(value, str):
            raise InvalidRequestError(f"parameter {printable(key)} must be a string")
        if CONTROL_CHARACTERS.search(key) or CONTROL_CHARACTERS.search(value):
            raise InvalidRequestError(f"parameter {printable(key)} contains control characters")
        if key in seen and key != "resource":
            raise InvalidRequestError(f"parameter {printable(key)} was sent more than once")
        seen.add(key)
    return items


def check_basic_credentials(headers) -> None:
    """Authlib assumes Basic credentials decode to UTF-8 text; refuse the ones that do not
    (RFC 6749 §2.3.1) with invalid_client instead of letting them crash the request."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = None
    if decoded is None or ":" not in decoded or CONTROL_CHARACTERS.search(unquote(decoded)):
        raise InvalidClientError(status_code=401, description="malformed Basic credentials")


@dataclass
class ProviderConfig:
    issuer: str
    accounts: dict[str, Account]
    resources: dict[str, Resource]
    scopes_supported: list[str]


class AuthorizationServer(AuthlibAuthorizationServer):
    json_headers = default_json_headers

    def __init__(self, config: ProviderConfig, store: Store, issuer: TokenIssuer):
        super().__init__(scopes_supported=config.scopes_supported)
        self.issuer_url = config.issuer
        self.accounts = config.accounts
        self.resources = config.resources
        self.store = store
        self.issuer = issuer
        self.metadata = self._metadata()
        register_grants_and_endpoints(self)

    def _metadata(self) -> dict:
        """RFC 8414 authorization server metadata; also served as OpenID discovery."""
        base = self.issuer_url
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "introspection_endpoint": f"{base}/introspect",
            "revocation_endpoint": f"{base}/revoke",
            "registration_endpoint": f"{base}/register",
            "device_authorization_endpoint": f"{base}/device_authorization",
            "jwks_uri": f"{base}/jwks.json",
            "userinfo_endpoint": f"{base}/userinfo",
            "scopes_supported": self.scopes_supported,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": GRANT_TYPES,
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "resource_indicators_supported": True,
            "access_token_format": self.issuer.access_token_format,
        }

    # -- the hooks Authlib asks a framework integration for -------------------------------

    def query_client(self, client_id: str) -> ClientRecord | None:
        return self.store.get_client(client_id)

    def save_token(self, token, request):  # every grant here stores its own tokens
        raise NotImplementedError

    def create_oauth2_request(self, request):
        return request  # already built from the awaited Starlette request

    def create_json_request(self, request):
        return request

    def handle_response(self, status: int, body, headers) -> Response:
        headers = dict(headers or [])
        if isinstance(body, dict):
            headers.pop("Content-Type", None)
            return JSONResponse(body, status_code=status, headers=headers)
        return Response(body or b"", status_code=status, headers=headers)

    def send_signal(self, name: str, *args, **kwargs) -> None:
        pass

    def error_response(self, error: OAuth2Error) -> Response:
        return self.handle_response(*error())

    # -- request adapters -----------------------------------------------------------------

    async def oauth2_request(self, request: Request) -> StarletteOAuth2Request:
        check_basic_credentials(request.headers)
        items = await read_parameters(request)
        return self.make_request(request.method, request.url.path, request, items)

    def make_request(
        self, method: str, path: str, request: Request, items: list[tuple[str, str]]
    ) -> StarletteOAuth2Request:
        return StarletteOAuth2Request(method, f"{self.issuer_url}{path}", request.headers, items)

    async def json_request(self, request: Request) -> JsonRequest:
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidRequestError("the body must be a JSON object") from exc
        if not isinstance(data, dict):
            raise InvalidRequestError("the body must be a JSON object")
        json_request = JsonRequest(request.method, str(request.url), dict(request.headers))
        json_request.payload = _Json(data)
        return json_request

    # -- endpoints served as JSON ----------------------------------------------------------

    async def token_endpoint(self, request: Request) -> Response:
        return await self._run(request, self.create_token_response)

    async def introspection_endpoint(self, request: Request) -> Response:
        return await self._run(request, self.create_endpoint_response, "introspection")

    async def revocation_endpoint(self, request: Request) -> Response:
        return await self._run(request, self.create_endpoint_response, "revocation")

    async def device_authorization_endpoint(self, request: Request) -> Response:
        return await self._run(request, self.create_endpoint_response, "device_authorization")

    async def registration_endpoint(self, request: Request) -> Response:
        try:
            json_request = await self.json_request(request)
        except OAuth2Error as error:
            return self.error_response(error)
        try:
            return await run_in_threadpool(
                self.create_endpoint_response, "client_registration", json_request
            )
        except ValueError:  # Authlib refuses to echo characters RFC 6749 forbids in errors
            return self.error_response(
                InvalidRequestError("a metadata value contains characters that are not allowed")
            )

    async def _run(self, request: Request, handler, *args) -> Response:
        try:
            oauth_request = await self.oauth2_request(request)
            return await run_in_threadpool(handler, *args, oauth_request)
        except OAuth2Error as error:
            return self.error_response(error)
        except ValueError:  # Authlib refuses to echo characters RFC 6749 forbids in errors
            return self.error_response(
                InvalidRequestError("a parameter contains characters that are not allowed")
            )

    def authenticate_resource_server(self, oauth_request: StarletteOAuth2Request) -> ClientRecord:
        """Client authentication for the admin API: only resource-server clients pass."""
        client = self.authenticate_client(
            oauth_request, ["client_secret_basic", "client_secret_post"], "admin"
        )
        if not client.resource_server:
            raise InvalidClientError(
                status_code=403, description="only resource-server clients may use this API"
            )
        return client
