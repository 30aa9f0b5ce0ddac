"""ASGI middleware every provider response passes through: a request-body size limit and
the security headers browsers need on our HTML pages (RFC 9700 §4.16: no framing). A page
may set a header itself (the consent page widens `form-action`, see `page_policy`)."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_oauth.common.asgi_body import read_body, replay

MAX_BODY_BYTES = 64 * 1024
CSP_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]+)?")


def page_policy(*form_targets: str) -> str:
    """The pages' Content-Security-Policy: nothing but our stylesheet, no framing, and forms
    that post only to this server, or to the sources given (`redirect_source`)."""
    sources = " ".join(("'self'", *form_targets))
    return (
        "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; "
        f"base-uri 'none'; form-action {sources}"
    )


def redirect_source(uri: str) -> str | None:
    """The form-action source that lets a form's POST be redirected to `uri` (browsers apply
    form-action to the redirects after a form's POST too): its origin. An IPv6 literal has
    no spelling in CSP's host-source grammar, so a loopback [::1] gets its scheme alone
    (http:). Anything that is not plainly scheme://host[:port] gets none rather than write
    CSP syntax."""
    parts = urlsplit(uri)
    origin = f"{parts.scheme}://{parts.netloc}"
    if CSP_ORIGIN.fullmatch(origin):
        return origin
    if parts.scheme == "http" and parts.hostname == "::1":
        return "http:"
    return None


HTML_HEADERS = [
    (b"content-security-policy", page_policy().encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


NOSNIFF = (b"x-content-type-options", b"nosniff")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyTooLarge(Exception):
    """A body passed the limit while the application was reading it."""


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length (RFC 9110 §8.6) when it is stated once, in digits; None
    otherwise (chunked, absent, or something the server let through that we will not trust)."""
    found = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            if found is not None or not value.isdigit():
                return None
            found = int(value)
    return found


def counted(receive: Receive, limit: int) -> Receive:
    """`receive`, refusing to hand the application more than `limit` bytes in all: the server
    already holds a declared body to its Content-Length; this keeps the limit ours."""
    size = 0

    async def receive_counted() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise BodyTooLarge
        return message

    return receive_counted


def secured(headers) -> list:
    """A response's headers plus nosniff, and on an HTML page the HTML_HEADERS the page did
    not set itself: one new list, the original left as it was."""
    result = [*headers]
    content_type = b""
    for name, value in result:
        if name == b"content-type":
            content_type = value
    result.append(NOSNIFF)
    if content_type.startswith(b"text/html"):
        present = {name.lower() for name, _ in result}
        result.extend(h for h in HTML_HEADERS if h[0] not in present)
    return result


class HardeningMiddleware:
    """The body limit and the headers, without holding a declared body: one within the limit
    streams to the application as it arrives (counted); one declared over it is refused before
    a byte is read; a chunked one is read under the limit first, as only then is its size known."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in BODY_METHODS:
            length = declared_length(scope)
            if length is None:
                body = await read_body(receive, self.max_body_bytes)
                if body is None:
                    await self._too_large(send)
                    return
                receive = replay(body, receive)
            elif length > self.max_body_bytes:
                await self._too_large(send)
                return
            else:
                receive = counted(receive, self.max_body_bytes)
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = secured(message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": "invalid_request",
                "error_description": f"request body larger than {self.max_body_bytes} bytes",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
