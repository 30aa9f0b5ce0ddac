"""The tool/scope table: which OAuth scope each tool needs, and what any MCP request needs.

Anonymous clients may initialize, discover, ping, send notifications, list tools and call
public tools. Every other method the MCP SDK may act on needs a valid token; an unknown tool
needs one too, so a tool that escaped the table is never public by accident. A method the SDK
does not serve needs nothing: it is answered -32601 (HTTP 404 under 2026-07-28) whoever asks,
rather than sending a client to sign in for a method that is not there.

Names are compared as the gate's stricter reading: a method or tool name that differs from a
served one only in case, width, spaces or invisible characters needs what that one needs, so
no spelling the SDK might ever accept reaches it with less.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Collection
from enum import Enum
from typing import Any, TypeVar

from fastmcp import FastMCP

from mcp_oauth.resource_server.fastmcp_internals import request_methods


class Access(Enum):
    """Requirements that are not a scope."""

    PUBLIC = "no token"
    SIGNED_IN = "any valid token"


PUBLIC = Access.PUBLIC
SIGNED_IN = Access.SIGNED_IN
Requirement = Access | str
"""What a request needs: PUBLIC, SIGNED_IN, or the name of an OAuth scope."""

F = TypeVar("F", bound=Callable[..., Any])

ANONYMOUS_METHODS = frozenset({"initialize", "server/discover", "ping", "tools/list"})


@functools.lru_cache(maxsize=1024)  # served names stay cached; bounded against junk names
def folded(name: str) -> str:
    """`name` reduced for lookalike comparison: NFKC, case-folded, without whitespace or
    invisible (format) characters."""
    text = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c) != "Cf")


def _served_as(name: str, served: Collection[str]) -> str | None:
    """The served name `name` is, or spells differently (see `folded`); None for none."""
    if name in served:
        return name
    key = folded(name)
    return next((known for known in served if folded(known) == key), None)


def satisfied(requirement: Requirement, granted: Collection[str] | None) -> bool:
    """Whether a caller with `granted` scopes (None: no valid token) meets `requirement`."""
    if requirement is PUBLIC:
        return True
    if granted is None:
        return False
    return requirement is SIGNED_IN or requirement in granted


class ToolScopes:
    """The tool/scope table: its `tool` decorator registers a FastMCP tool and what it needs."""

    def __init__(self, mcp: FastMCP, scopes: dict[str, str]):
        self.mcp = mcp
        self.scopes = scopes
        """Every scope this server knows, with what it allows (advertised in order)."""
        self.requirements: dict[str, Requirement] = {}

    def tool(self, *, scope: Requirement) -> Callable[[F], F]:
        """Register the decorated function as a tool needing `scope` (or PUBLIC / SIGNED_IN)."""
        if isinstance(scope, str) and scope not in self.scopes:
            raise ValueError(f"unknown scope {scope!r}; known: {', '.join(self.scopes)}")

        def register(fn: F) -> F:
            self.requirements[fn.__name__] = scope  # FastMCP names a tool after its function
            # Published in the tool's _meta too, so any MCP client can show what it needs.
            needs = scope if isinstance(scope, str) else scope.value
            return self.mcp.tool(fn, meta={"required_scope": needs})

        return register

    async def check_complete(self) -> None:
        """Refuse to start when a tool was registered without a requirement."""
        undeclared = {t.name for t in await self.mcp.list_tools()} - self.requirements.keys()
        if undeclared:
            raise RuntimeError(
                f"tools without a scope: {', '.join(sorted(undeclared))}; "
                "register them with @tool(scope=...)"
            )

    def requirement(self, message: Any) -> Requirement:
        """What a decoded POST body needs. For a batch, what its first message needing a token
        needs: a batch never runs (the gate refuses it), but who may not call a tool hears 401
        however the call is wrapped."""
        if isinstance(message, list):
            needs = (self._requirement_of(part) for part in message)
            return next((need for need in needs if need is not PUBLIC), PUBLIC)
        return self._requirement_of(message)

    def _requirement_of(self, message: Any) -> Requirement:
        method = message.get("method") if isinstance(message, dict) else None
        if not isinstance(method, str):
            return PUBLIC  # a response or malformed: the SDK refuses it, nothing runs
        served = _served_as(method, request_methods(self.mcp))
        if served is None:
            return PUBLIC  # not a method here: -32601 whoever asks
        if served == "tools/call":
            params = message.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            return self._tool_requirement(name) if isinstance(name, str) else SIGNED_IN
        return PUBLIC if served in ANONYMOUS_METHODS else SIGNED_IN

    def _tool_requirement(self, name: str) -> Requirement:
        tool = _served_as(name, self.requirements)
        return SIGNED_IN if tool is None else self.requirements[tool]

    def describe(self, granted: Collection[str]) -> list[dict[str, Any]]:
        """Each tool, what it needs, and whether a caller with `granted` scopes may call it."""
        return [
            {
                "tool": name,
                "needs": f"scope {need}" if isinstance(need, str) else need.value,
                "allowed": satisfied(need, granted),
            }
            for name, need in self.requirements.items()
        ]
