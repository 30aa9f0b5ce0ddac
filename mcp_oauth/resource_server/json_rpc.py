"""The JSON-RPC 2.0 side of the gate: what a POST body says, and refusals as error objects.

The gate reads a body before the MCP SDK does, so it parses strictly (a member name given twice
is refused, RFC 8259 §4 / RFC 7493 §2.3: no parser may then read a different method or tool
name than the gate did), and its refusals carry the request's id (JSON-RPC 2.0 §5: null only
when the id cannot be read), so MCP clients that read error bodies get a well-formed answer.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

RequestId = str | int


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("a JSON object names a member twice")
    return members


def decode(body: bytes) -> Any:
    """The JSON value of `body`; ValueError (or RecursionError) when it is not JSON or an object
    in it repeats a member name."""
    return json.loads(body, object_pairs_hook=_unique_members)


def request_id(message: Any) -> RequestId | None:
    """The id to answer `message` with: its own when it is a request's valid id (a string or an
    integer, MCP basic §Requests), else None (a notification, a batch, an unreadable id)."""
    found = message.get("id") if isinstance(message, dict) else None
    if isinstance(found, str) or (isinstance(found, int) and not isinstance(found, bool)):
        return found
    return None


def error_response(
    status: int,
    code: int,
    message: str,
    request_id: RequestId | None = None,
    *,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A JSON-RPC error object (always with `id`, null when unknown) under HTTP `status`."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    body = {"jsonrpc": "2.0", "id": request_id, "error": error}
    return JSONResponse(body, status, headers=headers)
