"""The MCP connection, with every OAuth problem solved between requests, never inside one.

The bearer token rides on each HTTP request (an httpx2 `Auth`), and a 401 or 403 is only
noted there. The MCP transport turns such a refusal into a plain JSON-RPC error; this session
sees that error, reads the noted challenge, lets `Login` recover (refresh or sign in again on
401, step up on 403 insufficient_scope, each at most once) and repeats the operation. Failing
that, the user gets one line saying why — never a login loop, never a traceback.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

import httpx2
import mcp_types
from fastmcp import Client
from mcp.shared.exceptions import MCPError

from mcp_oauth.client.errors import ClientError
from mcp_oauth.client.login import Login
from mcp_oauth.client.sdk_internals import (
    TRANSPORT_FAILURES,
    CallToolResult,
    DiscoverFirstTransport,
    mcp_http_client_factory,
)
from mcp_oauth.client.trace import Trace

T = TypeVar("T")


class Refused(Exception):
    """The MCP server answered 401 or 403; `answer` carries its WWW-Authenticate challenge."""

    def __init__(self, answer: httpx2.Response):
        super().__init__(f"HTTP {answer.status_code}")
        self.answer = answer


class BearerToken(httpx2.Auth):
    """Sends Login's current access token, and notes for the session how the server answered:
    its last error answer, or that a request got no answer at all."""

    def __init__(self, login: Login):
        self.login = login
        self.forget()

    def forget(self) -> None:
        self.refusal: httpx2.Response | None = None
        self.unanswered = False

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        if token := self.login.access_token:
            request.headers["Authorization"] = f"Bearer {token}"
        self.unanswered = True  # stays so when sending fails: httpx2 never resumes the flow then
        response = yield request
        self.unanswered = False
        if response.status_code >= 400:
            self.refusal = response


class McpSession:
    """`async with McpSession(...) as mcp:` then `await mcp.list_tools()` / `mcp.call_tool()`."""

    def __init__(self, login: Login, trace: Trace | None):
        self.login = login
        self.url = login.server_url
        self.bearer = BearerToken(login)
        self.hooks = trace.hooks() if trace else {}
        self.client: Client | None = None

    async def __aenter__(self) -> McpSession:
        await self._authorized(self._connect)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.client is not None:
            # Closing a session whose server went away is no failure of its own: it must not
            # turn a finished command into an error, nor hide the error that ended it.
            with suppress(Exception):
                await self.client.__aexit__(None, None, None)

    async def list_tools(self) -> list[mcp_types.Tool]:
        return await self._authorized(lambda: self._connected().list_tools())

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        return await self._authorized(
            lambda: self._connected().call_tool(name, arguments, raise_on_error=False)
        )

    def _connected(self) -> Client:
        assert self.client is not None, "use McpSession as an async context manager"
        return self.client

    async def _connect(self) -> None:
        """Connect as the 2026-07-28 revision says: `server/discover` first. A 401/403 to it
        means "sign in", not "a 2025 server": it ends this connection attempt (`_attempt` reads
        the noted answer), so the 2025 `initialize` fallback is only for servers that answer
        the probe as 2025 servers do."""
        transport = DiscoverFirstTransport(
            self.url,
            refusal=self._refused,
            auth=self.bearer,
            httpx_client_factory=mcp_http_client_factory(self.hooks),
        )
        client = Client(transport)
        await client.__aenter__()
        self.client = client

    def _refused(self) -> Refused | None:
        answer = self.bearer.refusal
        return Refused(answer) if answer is not None and answer.status_code in (401, 403) else None

    async def _authorized(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation`; after a 401 let Login sign in, after a 403 let it step up, each at
        most once, and run it again — three attempts at most, so never a loop."""
        await self.login.refresh_if_due()
        recovered: set[int] = set()
        while True:
            try:
                return await self._attempt(operation)
            except Refused as refused:
                status = refused.answer.status_code
                if status in recovered:
                    raise ClientError(
                        f"{self.url} still refuses after signing in (HTTP {status}: "
                        f"{refused.answer.headers.get('www-authenticate', '')})",
                        "check that the MCP server and the provider agree on the resource URL",
                    ) from refused
                recovered.add(status)
                if status == 401:
                    await self.login.recover(refused.answer)
                else:
                    await self.login.step_up(refused.answer)

    async def _attempt(self, operation: Callable[[], Awaitable[T]]) -> T:
        """The operation's result; Refused carries the 401/403 answer that stopped it."""
        self.bearer.forget()
        try:
            return await operation()
        except TRANSPORT_FAILURES as exc:
            answer = self.bearer.refusal
            if answer is not None and answer.status_code in (401, 403):
                raise Refused(answer) from exc
            raise self._explain(exc, answer) from exc

    def _explain(self, exc: Exception, answer: httpx2.Response | None) -> ClientError:
        if answer is not None and answer.status_code == 503:
            return ClientError(
                f"the MCP server at {self.url} cannot reach its authorization server (HTTP 503)",
                "start the provider (python oauth_provider.py) and try again",
            )
        if answer is not None:
            return ClientError(
                f"{self.url} is not an MCP server "
                f"(HTTP {answer.status_code} {answer.reason_phrase})",
                "point --url at the MCP endpoint, e.g. http://localhost:8000/mcp",
            )
        if self.bearer.unanswered:
            return ClientError(
                f"cannot reach the MCP server at {self.url}",
                "start it (python mcp_resource_server.py) or pass the right --url",
            )
        if isinstance(exc, MCPError):
            return ClientError(
                f"the MCP server refused the request: {exc}",
                "check the tool name and its arguments ('tools' lists them)",
            )
        return ClientError(
            f"the MCP connection to {self.url} failed: {exc}", "re-run with --trace to see why"
        )
