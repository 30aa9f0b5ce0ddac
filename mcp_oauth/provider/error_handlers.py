"""What the provider answers for a path it does not serve, a method a route does not take, and
an unexpected error (logged with its traceback, never shown)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_oauth.provider.pages import message_page

log = logging.getLogger("oauth_provider")


async def not_found(request: Request, exc: Exception) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return message_page(request, 404, "Not found", "There is no page here.")
    return JSONResponse({"error": "not_found"}, 404)


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        {"error": "invalid_request", "error_description": "method not allowed"}, 405
    )


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": "server_error"}, 500)


EXCEPTION_HANDLERS = {404: not_found, 405: method_not_allowed, 500: server_error}
