"""What the client relies on in FastMCP and the MCP SDK beyond their public promises, in one place.

Everything else the client takes from the SDK is public (`mcp.client.auth.utils`, `mcp.shared.auth`,
`fastmcp.Client`, `StreamableHttpTransport`). The pieces below are not, or are behaviour the SDK
does not document; `tests/test_client_sdk_fence.py` checks each one, so an upgrade that changes
them fails there with a message naming the piece, not somewhere in the middle of a sign-in.

Behaviour relied on elsewhere, also checked there:
- httpx2 never resumes an `Auth` flow whose request could not be sent (`session.BearerToken`
  reads "no answer at all" from that).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx2
from fastmcp.client.client import CallToolResult
from fastmcp.client.transports import StreamableHttpTransport
from mcp.client.session import ClientSession
from mcp.shared._httpx_utils import McpHttpClientFactory, create_mcp_http_client
from mcp.shared.exceptions import MCPError

__all__ = [
    "FACTORY_OPTIONS",
    "TRANSPORT_FAILURES",
    "CallToolResult",
    "DiscoverFirstTransport",
    "mcp_http_client_factory",
]

# `CallToolResult`: what `fastmcp.Client.call_tool` returns. fastmcp exports it only from its
# private-looking `fastmcp.client.client` module, not from `fastmcp.client`.

TRANSPORT_FAILURES: tuple[type[Exception], ...] = (MCPError, RuntimeError, httpx2.HTTPError)
"""What a fastmcp `Client` operation raises when the HTTP exchange fails: an HTTP error answer
(401, 403, 404 …) arrives as a bare `MCPError` ("Server returned an error response"), an
unreachable server as a `RuntimeError`, anything else from httpx2 as itself. The answer itself
never reaches the caller, which is why `session.BearerToken` notes it on the way in."""

FACTORY_OPTIONS = frozenset({"headers", "auth", "timeout", "follow_redirects"})
"""The keyword arguments fastmcp's `StreamableHttpTransport` passes to `httpx_client_factory`."""


def mcp_http_client_factory(event_hooks: dict[str, list[Any]]) -> McpHttpClientFactory:
    """An `httpx_client_factory` for `StreamableHttpTransport`: the SDK's own MCP client
    (`create_mcp_http_client`, in the private `mcp.shared._httpx_utils`: its 30 s / 300 s-read
    timeouts) plus our event hooks, so `--trace` sees the MCP exchanges too.

    fastmcp asks for `follow_redirects=True`; it is ignored, as the SDK's own default client
    does: the MCP transport follows redirects itself, and only within the endpoint's origin.
    """

    def factory(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
        follow_redirects: bool | None = None,
    ) -> httpx2.AsyncClient:
        client = create_mcp_http_client(headers=headers, timeout=timeout, auth=auth)
        client.event_hooks = event_hooks
        return client

    return factory


class DiscoverFirstTransport(StreamableHttpTransport):
    """fastmcp's HTTP transport, except that a refused `server/discover` probe ends the
    connection attempt instead of falling back to the 2025 `initialize` handshake.

    The SDK connects (mode "auto") by probing `server/discover`, and takes any error answer
    as a sign of a 2025 server (`mcp.client._probe.negotiate_auto`). A 401 or 403 is no such
    sign: the server wants a token first. `refusal()` returns the exception to raise instead
    (anything but an `MCPError`, which the SDK lets through), or None to leave the verdict to
    the SDK. The one door is the session's `send_discover`, which fastmcp wraps the same way
    (`fastmcp.client.client._conformant_discover_only`, keeping a transport's own override).
    """

    def __init__(self, url: str, *, refusal: Callable[[], Exception | None], **options: Any):
        super().__init__(url, **options)
        self.refusal = refusal

    @contextlib.asynccontextmanager
    async def connect_session(self, **options: Any) -> AsyncGenerator[ClientSession, None]:
        async with super().connect_session(**options) as session:
            probe = session.send_discover

            async def send_discover(version: str) -> dict[str, Any]:
                try:
                    return await probe(version)
                except MCPError:
                    if (failure := self.refusal()) is not None:
                        raise failure from None
                    raise

            session.send_discover = send_discover  # type: ignore[method-assign]
            yield session
