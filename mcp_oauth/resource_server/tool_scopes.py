"""The tool/scope table: which OAuth scope each tool needs, and what any MCP request needs.

Anonymous clients may initialize, discover, ping, send notifications, list tools and call
public tools. Everything else needs a valid token; an unknown tool needs one too, so a tool
that escaped the table is never public by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from enum import Enum
from typing import Any, TypeVar

from fastmcp import FastMCP


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
        """What one decoded JSON-RPC message needs."""
        method = message.get("method") if isinstance(message, dict) else None
        if not isinstance(method, str):
            return PUBLIC  # a response or malformed: the SDK refuses it, nothing runs
        if method == "tools/call":
            params = message.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            return self.requirements.get(name, SIGNED_IN) if isinstance(name, str) else SIGNED_IN
        if method in ANONYMOUS_METHODS or method.startswith("notifications/"):
            return PUBLIC
        return SIGNED_IN

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
