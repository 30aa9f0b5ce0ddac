"""Signing in without a browser: drive the provider's own login and consent forms over HTTP.

Used by `client.py --user … --password …`, the demo and the tests. It reads the forms the
provider serves (fields `username`, `password`, the CSRF token and the hidden request
parameters) exactly as a browser would, so it exercises the real pages, not a back door.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx2
from mcp.client.auth import PKCEParameters
from mcp.shared.auth import OAuthClientInformationFull

from mcp_oauth.client.authorization_code import AuthorizationRequest, authorization_code_flow
from mcp_oauth.client.discovery import ServerMetadata
from mcp_oauth.client.token_requests import Endpoints

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


class HeadlessLoginError(Exception):
    """The sign-in did not produce an authorization code; the message says why."""


class WrongPasswordError(HeadlessLoginError):
    pass


class AuthorizationRequestRefused(HeadlessLoginError):
    """The provider answered the authorization request itself with an error page: it cannot
    trust the client id or redirect URI, so it must not redirect back (RFC 6749 §4.1.2.1)."""


@dataclass
class Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.errors: list[str] = []
        self._in_error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif tag == "input" and self.forms and a.get("name"):
            if a.get("type", "text") != "submit":
                self.forms[-1].fields.append((a["name"], a.get("value", "")))
        elif tag == "button" and self.forms and a.get("name"):
            self.forms[-1].buttons.append((a["name"], a.get("value", "")))
        elif "error" in a.get("class", "").split():
            self._in_error = True

    def handle_endtag(self, tag: str) -> None:
        self._in_error = False

    def handle_data(self, data: str) -> None:
        if self._in_error and data.strip():
            self.errors.append(data.strip())


def parse_page(html: str) -> _FormParser:
    parser = _FormParser()
    parser.feed(html)
    return parser


def check_password_transport(url: str) -> None:
    """Refuse to send a password over plain http to anything but this machine."""
    parts = urlsplit(url)
    if parts.scheme != "https" and parts.hostname not in LOOPBACK_HOSTS:
        raise HeadlessLoginError(
            f"refusing to send a password over plain http to {parts.hostname}; use https"
        )


async def authorize_with_password(
    http: httpx2.AsyncClient,
    authorize_url: str,
    username: str,
    password: str,
    *,
    approve: bool = True,
) -> str:
    """Follow authorize_url through the login and consent pages; return the redirect URL
    (carrying code or error, state and iss) without following it."""
    check_password_transport(authorize_url)
    response = await http.get(authorize_url)  # the one authorization request of this sign-in
    if response.status_code >= 400 and not parse_page(response.text).forms:
        page = parse_page(response.text)
        raise AuthorizationRequestRefused(" ".join(page.errors) or f"HTTP {response.status_code}")
    for _ in range(6):
        if response.status_code in (301, 302, 303, 307, 308):
            location = urljoin(str(response.url), response.headers["location"])
            if _same_origin(location, authorize_url):
                response = await http.get(location)
                continue
            return location
        page = parse_page(response.text)
        if response.status_code >= 400 and not page.forms:
            raise HeadlessLoginError(" ".join(page.errors) or f"HTTP {response.status_code}")
        form = _pick_form(page, response)
        data = dict(form.fields)
        if "password" in data:
            if response.status_code == 401:
                raise WrongPasswordError(f"wrong username or password for {username}")
            if response.status_code == 429:
                raise HeadlessLoginError(" ".join(page.errors))
            data.update(username=username, password=password)
        elif dict(form.buttons).get("decision") is not None:
            data["decision"] = "approve" if approve else "deny"
        action = urljoin(str(response.url), form.action or str(response.url))
        response = await http.post(action, data=data)
    raise HeadlessLoginError("the provider's pages did not lead back to the client")


def _pick_form(page: _FormParser, response: httpx2.Response) -> Form:
    if not page.forms:
        status = response.status_code
        raise HeadlessLoginError(
            " ".join(page.errors) or f"unexpected page from the provider (HTTP {status})"
        )
    return page.forms[0]


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.netloc) == (pb.scheme, pb.netloc)


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636, made by the MCP SDK as the client's."""
    pkce = PKCEParameters.generate()
    return pkce.code_verifier, pkce.code_challenge


async def obtain_tokens(
    issuer: str,
    username: str,
    password: str,
    *,
    scope: str,
    resource: str | None,
    client_id: str = "mcp-client",
    redirect_uri: str = "http://127.0.0.1:8976/callback",
) -> dict:
    """The client's own authorization code flow against our provider, signed in headlessly;
    the token response as a dict.

    For scripts and tests: the endpoints are our provider's paths below `issuer` (no
    discovery), and the redirect is read from the Location header, so nothing needs to listen
    on redirect_uri. Failures raise as they do in the client (`ClientError`,
    `OAuthErrorResponse`, `HeadlessLoginError`).
    """
    metadata = ServerMetadata.model_validate(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "response_types_supported": ["code"],
            "authorization_response_iss_parameter_supported": True,
        }
    )
    client = OAuthClientInformationFull(client_id=client_id, token_endpoint_auth_method="none")
    async with httpx2.AsyncClient(timeout=30) as http:
        request = AuthorizationRequest(Endpoints(http, metadata, client, resource), scope)

        async def user_agent(url: str) -> str:
            return await authorize_with_password(http, url, username, password)

        tokens = await authorization_code_flow(request, redirect_uri, user_agent)
    return tokens.model_dump(exclude_none=True)
