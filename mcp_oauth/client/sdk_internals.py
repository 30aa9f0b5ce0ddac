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

from typing import Any

import httpx2
from fastmcp.client.client import CallToolResult
from mcp.shared._httpx_utils import McpHttpClientFactory, create_mcp_http_client
from mcp.shared.exceptions import MCPError

__all__ = ["FACTORY_OPTIONS", "TRANSPORT_FAILURES", "CallToolResult", "mcp_http_client_factory"]

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
