"""Bad tool arguments answered in one short sentence per argument.

FastMCP hands a caller pydantic's full dump for bad arguments: error type codes, the input
echoed back and a documentation URL per error. The caller needs only which argument was wrong
and why; this middleware says that as a tool error (the request itself was fine: HTTP 200).
"""

from __future__ import annotations

from typing import Any

from fastmcp.exceptions import ToolError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from mcp_oauth.resource_server.fastmcp_internals import argument_errors


def argument_message(errors: list[Any]) -> str:
    """`Invalid argument note_id: Input should be a valid integer; ...`, naming each argument."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        parts.append(f"{where}: {error['msg']}")
    return "Invalid argument " + "; ".join(parts)


class ShortArgumentErrors(Middleware):
    """Turns FastMCP's validation dump for a tool call into `argument_message`.

    It overrides `__call__` (FastMCP's documented whole-message hook) rather than
    `on_call_tool`: the typed hooks cost a chain of handler wrappers on every message (a few
    percent of a cached tools/call, profiled), for an exception only a tool call can raise."""

    async def __call__(self, context: MiddlewareContext, call_next: CallNext) -> Any:
        try:
            return await call_next(context)
        except Exception as exc:
            errors = argument_errors(exc) if context.method == "tools/call" else None
            if errors is None:
                raise
            raise ToolError(argument_message(errors)) from None
