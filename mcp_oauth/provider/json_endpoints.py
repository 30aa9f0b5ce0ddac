"""The plumbing of the JSON endpoints, lean where every token request and introspection
passes: answers whose fixed headers are encoded once, the busiest endpoints served as plain
ASGI apps, and reached without the router.

Measured in process, the first two took an introspection from 54 to 50 µs of CPU in the
application: Starlette's `request_response` wraps each function endpoint in a second
exception-handler layer (the application's ExceptionMiddleware already is one, with the same
handlers), and JSONResponse encodes the same headers again for every answer and makes a JSON
encoder for each. Past the body limit and the headers (http_hardening.py), the
ExceptionMiddleware and the router (each route's pattern tried in turn, a child scope built)
cost another 3.7 of the 10.5 µs Starlette's whole stack takes for an endpoint answering a
constant; JsonRoutes skips them for the POSTs to these endpoints' own paths, which took an
introspection from 50.5 to 43.6 µs in process.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

# RFC 6749 §5.1: a response holding tokens or credentials must not be stored by a cache.
NO_STORE_JSON = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
]
SET_BY_JSON_ANSWER = {"content-type", "cache-control", "pragma", "content-length"}
# As Starlette's JSONResponse renders, with one encoder (json.dumps with options makes one
# per call).
render_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class JsonAnswer(Response):
    """An OAuth JSON answer (RFC 6749 §5.1, §5.2): the object rendered as Starlette's
    JSONResponse renders it (compact, UTF-8), never cached, plus the answer's own headers
    (an error's WWW-Authenticate, a 503's Retry-After)."""

    def __init__(self, status: int, body: dict, headers: Iterable[tuple[str, str]] = ()):
        self.status_code = status
        self.background = None
        self.body = render_json(body).encode()
        self.raw_headers = [*NO_STORE_JSON, (b"content-length", b"%d" % len(self.body))]
        for name, value in headers:
            if name.lower() not in SET_BY_JSON_ANSWER:
                self.raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))


class JsonEndpoint:
    """An endpoint function served as a plain ASGI app: Starlette's Route calls it directly
    (no `request_response` layer); an exception still reaches the application's handlers.
    The route is named after the function, as a function's route is."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]):
        self.endpoint = endpoint
        self.__name__ = endpoint.__name__

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.endpoint(Request(scope, receive))
        await response(scope, receive, send)


class JsonRoutes:
    """Middleware, the innermost: a POST to the exact path of a JsonEndpoint route goes
    straight to that endpoint; every other request to the application's router, as before
    (a GET there is still 405, a path with a trailing slash still redirected). The endpoints
    answer their own errors (an OAuth error as its RFC says, an outage 503); anything else
    they raise is an unexpected error, answered 500 by Starlette's ServerErrorMiddleware as
    it was through the router."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]):
        self.app = app
        self.endpoints = {
            route.path: route.app
            for route in routes
            if isinstance(route, Route) and isinstance(route.app, JsonEndpoint)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.endpoints.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)
