"""What every provider request passes through (http_hardening.py, the routes of
oauth_provider.py), kept cheap without changing what a client sees: the body limit holds
whether a body is declared, chunked or longer than it said; the session cookie exists only on
the pages a person uses, so an API answer never sets or clears it."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.errors import InsecureTransportError
from starlette.datastructures import Headers
from starlette.formparsers import FormParser

from mcp_oauth.provider.http_hardening import MAX_BODY_BYTES, HardeningMiddleware
from mcp_oauth.provider.oauth_request import StarletteOAuth2Request, form_items
from tests.conftest import RS_AUTH, Provider, start_provider
from tests.oauth_helpers import Browser

HTTP = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


@pytest.fixture(scope="module")
def provider(tmp_path_factory) -> Iterator[Provider]:
    handle = start_provider(tmp_path_factory.mktemp("request-path"))
    yield handle
    handle.process.stop()


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(provider):
    """Only the headers go out: the 413 must come without the server waiting for the body
    (a server that waited would leave recv to time out, and the test fails)."""
    parts = urlsplit(provider.url)
    request = (
        b"POST /token HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):  # the 413 closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b'"invalid_request"' in answer


def test_a_body_longer_than_the_application_may_read_is_413():
    """A server that hands over more than the declared Content-Length (uvicorn does not):
    the application still never reads past the limit, and the client gets the 413."""
    read: list[int] = []

    async def app(scope, receive, send):
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        read.append(size)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})

    chunks = [b"x" * 8192 for _ in range(10)]

    async def receive():
        return {"type": "http.request", "body": chunks.pop(), "more_body": bool(chunks)}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"10")]}
    asyncio.run(HardeningMiddleware(app)(scope, receive, send))
    assert read == [] and sent[0]["status"] == 413


def test_pieces_of_a_declared_body_reach_the_endpoint_whole(provider):
    """A declared body sent in several writes is read as it arrives, all of it."""
    body = b"grant_type=client_credentials&pad=" + b"x" * 30000
    parts = urlsplit(provider.url)
    basic = httpx.BasicAuth(*RS_AUTH)._auth_header.encode()
    head = (
        b"POST /token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + b"Authorization: " + basic + b"\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )  # fmt: skip
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.sendall(head)
        for start in range(0, len(body), 4096):
            sock.sendall(body[start : start + 4096])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b'"access_token"' in answer


def test_api_answers_never_set_the_session_cookie(provider):
    """A signed-in browser's cookie goes along to the JSON endpoints (same host): they run
    without the session, their answers carry no Set-Cookie, and the pages still know who
    signed in (the cookie on a page, not on a route's list, is what sessions depend on)."""
    browser = Browser(provider.url, "alice", "password123")
    assert browser.http.cookies.get("oauth_session")
    answers = {
        "token": browser.http.post(
            "/token", data={"grant_type": "client_credentials"}, auth=RS_AUTH
        ),
        "introspect": browser.http.post("/introspect", data={"token": "x" * 43}, auth=RS_AUTH),
        "revoke": browser.http.post("/revoke", data={"token": "x" * 43}, auth=RS_AUTH),
        "jwks": browser.http.get("/jwks.json"),
        "metadata": browser.http.get("/.well-known/oauth-authorization-server"),
        "userinfo": browser.http.get("/userinfo"),
        "not found": browser.http.get("/nowhere"),
    }
    for name, answer in answers.items():
        assert answer.status_code < 500, name
        assert "set-cookie" not in answer.headers, name
    page = browser.http.get("/device")
    assert page.status_code == 200 and 'name="password"' not in page.text
    assert 'name="csrf_token"' in page.text


def test_json_and_page_headers_on_the_lean_path(provider):
    """nosniff on every answer, the page headers only on HTML, and a page's own
    Content-Security-Policy (the consent page's) kept rather than doubled."""
    json_answer = HTTP.post(f"{provider.url}/introspect", data={"token": "x"}, auth=RS_AUTH)
    assert json_answer.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in json_answer.headers
    assert "x-frame-options" not in json_answer.headers
    page = HTTP.get(f"{provider.url}/device")
    assert len(page.headers.get_list("content-security-policy")) == 1
    assert page.headers["x-frame-options"] == "DENY"


def test_the_json_endpoints_past_the_router_answer_as_routes_do(provider):
    """JsonRoutes takes only a POST to one of their exact paths; anything else there is still
    the router's answer: 405 for another method, the redirect for a trailing slash."""
    for path in ("/token", "/introspect", "/revoke"):
        answer = HTTP.get(f"{provider.url}{path}", auth=RS_AUTH)
        assert answer.status_code == 405, (path, answer.text)
        assert answer.json() == {
            "error": "invalid_request",
            "error_description": "method not allowed",
        }
        assert answer.headers["x-content-type-options"] == "nosniff"
    slash = HTTP.post(f"{provider.url}/introspect/", data={"token": "x" * 43}, auth=RS_AUTH)
    assert slash.status_code == 307 and slash.headers["location"].endswith("/introspect")


FIELD_PIECES = [b"a", b"b", b"=", b"&", b";", b"%", b"2", b"F", b"+", b" ", b"\xff", b"%e2%82",
                b"\x00", b"\r\n", b"==", b"%3D", b"%26", b"%zz", b"&&"]  # fmt: skip


def test_form_bodies_read_as_starlettes_parser_read_them():
    """The provider's own urlencoded reader gives the items Starlette's parser gave, for the
    awkward bodies too (`;`, stray `%`, latin-1 bytes, empty fields, `=` in values), and
    long fields (past the ones oauth_request.form_decoded keeps decoded)."""
    rng = random.Random(14)
    one_field = [piece for piece in FIELD_PIECES if b"&" not in piece]
    for number in range(3000):
        if number % 10:
            body = b"".join(rng.choice(FIELD_PIECES) for _ in range(rng.randint(0, 16)))
        else:  # one long field
            body = b"".join(rng.choice(one_field) for _ in range(rng.randint(100, 400)))
        assert form_items(body) == asyncio.run(starlette_items(body)), body


async def starlette_items(body: bytes) -> list[tuple[str, str]]:
    async def stream():
        yield body

    return list((await FormParser(Headers(), stream()).parse()).multi_items())


def test_the_request_object_has_everything_authlibs_has():
    """StarletteOAuth2Request sets Authlib's attributes itself (its https check cached): an
    Authlib upgrade that adds one shows up here, not as an AttributeError in a grant."""
    ours = StarletteOAuth2Request("POST", "http://127.0.0.1/token", {"host": "x"}, [])
    authlibs = OAuth2Request("POST", "http://127.0.0.1/token", headers={"host": "x"})
    assert set(vars(authlibs)) <= set(vars(ours))
    assert {k: v for k, v in vars(ours).items() if k in vars(authlibs) and k != "payload"} == {
        k: v for k, v in vars(authlibs).items() if k != "payload"
    }
    with pytest.raises(InsecureTransportError):
        StarletteOAuth2Request("POST", "http://auth.example/token", {}, [])
