"""The MCP Python SDK's own OAuth client (`mcp.client.auth.OAuthClientProvider`) as a host
application would run it, for tests/test_interop_mcp_clients.py.

    python python_driver.py <mcp-server-url>

Reads one JSON command a line on stdin ({"tool": name, "arguments": {...}}) and writes one JSON
event a line on stdout: `registered`, `tokens`, `authorize` (the host "opens the browser" at that
URL: the test drives Chromium there), `result`. The OAuth work (discovery, dynamic registration,
PKCE, `resource`, step-up, refresh) is the SDK's own; this file only supplies what the SDK leaves
to the host: storage, a loopback redirect URI and the browser hand-off.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


class LoopbackCallback:
    """The loopback redirect URI (RFC 8252 §7.3): each callback's query, by its state."""

    def __init__(self) -> None:
        self.queries: dict[str, dict[str, str]] = {}
        self.arrived = asyncio.Condition()
        self.port = 0

    async def start(self) -> None:
        server = await asyncio.start_server(self.answer, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        target = request_line.split(" ")[1] if request_line.count(" ") >= 2 else "/"
        parts = urlsplit(target)
        if parts.path == "/callback":
            query = {name: values[0] for name, values in parse_qs(parts.query).items()}
            async with self.arrived:
                self.queries[query.get("state", "")] = query
                self.arrived.notify_all()
            body, status = b"<h1>Signed in</h1><p>You can close this tab.</p>", "200 OK"
        else:
            body, status = b"", "404 Not Found"
        head = f"HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    async def wait_for(self, state: str) -> dict[str, str]:
        async with self.arrived:
            await self.arrived.wait_for(lambda: state in self.queries)
            return self.queries[state]


class MemoryStorage:
    """The SDK's TokenStorage, kept in memory and reported as events."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        emit("tokens", tokens=tokens.model_dump(mode="json", exclude_none=True))

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info
        emit("registered", client=client_info.model_dump(mode="json", exclude_none=True))


async def main(server_url: str) -> None:
    callback = LoopbackCallback()
    await callback.start()
    sent_state: list[str] = []

    async def redirect_handler(url: str) -> None:
        sent_state.append(parse_qs(urlsplit(url).query)["state"][0])
        emit("authorize", url=url)

    async def callback_handler() -> AuthorizationCodeResult:
        query = await callback.wait_for(sent_state[-1])
        if "code" not in query:
            raise RuntimeError(f"authorization failed: {query}")
        return AuthorizationCodeResult(
            code=query["code"], state=query["state"], iss=query.get("iss")
        )

    redirect_uri = f"http://127.0.0.1:{callback.port}/callback"
    oauth = OAuthClientProvider(
        server_url,
        OAuthClientMetadata(
            client_name="Interop test host (MCP Python SDK)",
            redirect_uris=[redirect_uri],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        MemoryStorage(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    async with httpx2.AsyncClient(auth=oauth, timeout=60) as http:
        async with Client(streamable_http_client(server_url, http_client=http)) as client:
            lines = anyio.wrap_file(sys.stdin)
            async for line in lines:
                if not line.strip():
                    continue
                command = json.loads(line)
                try:
                    result = await client.call_tool(command["tool"], command.get("arguments") or {})
                    answer = result.model_dump(mode="json", exclude_none=True)
                    emit("result", ok=not result.is_error, result=answer)
                except Exception as error:  # the host reports what the SDK raised
                    emit("result", ok=False, error=f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
