"""ASGI middleware every provider response passes through: a request-body size limit and
the security headers browsers need on our HTML pages (RFC 9700 §4.16: no framing). A page
may set a header itself (the consent page widens `form-action`, see `page_policy`)."""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_oauth.common.asgi_body import read_body, replay

MAX_BODY_BYTES = 64 * 1024
CSP_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]+)?|http://\[[0-9A-Fa-f:.]+\](:[0-9]+)?")


def page_policy(*form_targets: str) -> str:
    """The pages' Content-Security-Policy: nothing but our stylesheet, no framing, and forms
    that post only to this server, or to the origins given. (Browsers apply form-action to
    the redirects after a form's POST too, so the consent page names the client's redirect
    URI origin: its decision is redirected there.) An origin that is not plainly
    scheme://host[:port] is left out rather than let it write CSP syntax."""
    origins = [origin for origin in form_targets if CSP_ORIGIN.fullmatch(origin)]
    sources = " ".join(("'self'", *origins))
    return (
        "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; "
        f"base-uri 'none'; form-action {sources}"
    )


HTML_HEADERS = [
    (b"content-security-policy", page_policy().encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class HardeningMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await read_body(receive, self.max_body_bytes)
            if body is None:
                await self._too_large(send)
                return
            receive = replay(body, receive)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                content_type = dict(headers).get(b"content-type", b"")
                if content_type.startswith(b"text/html"):
                    present = {name.lower() for name, _ in headers}
                    headers.extend(h for h in HTML_HEADERS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

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
