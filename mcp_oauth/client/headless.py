"""Signing in without a browser: drive the provider's own login and consent forms over HTTP.

Used by `client.py --user … --password …`, the demo and the tests. It reads the forms the
provider serves (fields `username`, `password`, the CSRF token and the hidden request
parameters) exactly as a browser would, so it exercises the real pages, not a back door.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


class HeadlessLoginError(Exception):
    """The sign-in did not produce an authorization code; the message says why."""


class WrongPasswordError(HeadlessLoginError):
    pass


class ConsentDeniedError(HeadlessLoginError):
    pass


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
    http: httpx.AsyncClient,
    authorize_url: str,
    username: str,
    password: str,
    *,
    approve: bool = True,
) -> str:
    """Follow authorize_url through the login and consent pages; return the redirect URL
    (carrying code or error, state and iss) without following it."""
    check_password_transport(authorize_url)
    response = await http.get(authorize_url)
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


def _pick_form(page: _FormParser, response: httpx.Response) -> Form:
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
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


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
    """The whole authorization code flow with PKCE against our provider; the token response.

    For scripts and tests: the redirect is read from the Location header, so nothing needs
    to listen on redirect_uri.
    """
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if resource:
        params["resource"] = resource
    async with httpx.AsyncClient(timeout=30) as http:
        callback = await authorize_with_password(
            http, f"{issuer}/authorize?{urlencode(params)}", username, password
        )
        query = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        if query.get("state") != state or query.get("iss") != issuer:
            raise HeadlessLoginError("the authorization response has a wrong state or iss")
        if "error" in query:
            error = query["error"]
            if error == "access_denied":
                raise ConsentDeniedError("consent was denied")
            raise HeadlessLoginError(f"{error}: {query.get('error_description', '')}")
        form = {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": verifier,
        }
        if resource:
            form["resource"] = resource
        response = await http.post(f"{issuer}/token", data=form)
        if response.status_code != 200:
            raise HeadlessLoginError(f"token request failed: {response.text}")
        return response.json()
