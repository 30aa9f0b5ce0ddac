"""The resource server's keep-alive client to the provider's introspection endpoint
(mcp_oauth/resource_server/form_poster.py): one connection reused, a provider restart survived
(the next call succeeds; a call while it is down is a 503, never a hang or a 500), and every
kind of broken answer an ExchangeFailed (which the provider code turns into a 503).

The first tests run the real provider and resource server; the others script a small real
HTTP/1.1 server on a free port, for the answers a real provider gives only by accident."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from socket import SO_LINGER, SOL_SOCKET

import httpx
import pytest

from mcp_oauth.resource_server.form_poster import ExchangeFailed, FormPoster
from tests.conftest import RS_SECRET, Provider, start_provider, start_resource_server
from tests.support import ServerProcess, free_port

ACCEPT = "application/json, text/event-stream"
RS_AUTH = ("mcp-resource-server", RS_SECRET)


# -- the real provider and resource server ------------------------------------------------------


@dataclass
class Stack:
    provider: Provider
    rs: ServerProcess
    mcp_url: str

    def token(self) -> str:
        form = {"grant_type": "client_credentials", "scope": "read", "resource": self.mcp_url}
        response = httpx.post(f"{self.provider.url}/token", data=form, auth=RS_AUTH, timeout=30)
        response.raise_for_status()
        return response.json()["access_token"]

    def call(self, token: str) -> httpx.Response:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "get_user_profile", "arguments": {}}}  # fmt: skip
        headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token}"}
        return httpx.post(self.mcp_url, json=body, headers=headers, timeout=30)

    def introspections(self) -> int:
        metrics = httpx.get(self.mcp_url.removesuffix("/mcp") + "/metrics", timeout=10).json()
        return metrics["token_verifier"]["introspections"]

    def served_again(self, token: str) -> httpx.Response:
        """The first answer that is not a 503, polling past the RS's failure pause (it
        doubles from 1 s, at most 30 s) until a deadline derived from it."""
        deadline = time.monotonic() + 2 * 30
        while True:
            response = self.call(token)
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("pool")
    port = free_port()
    mcp_url = f"http://127.0.0.1:{port}/mcp"
    provider = start_provider(tmp, resource=mcp_url)
    env = {
        "OAUTH_PROVIDER_URL": provider.url,
        "MCP_RS_CLIENT_ID": RS_AUTH[0],
        "MCP_RS_CLIENT_SECRET": RS_SECRET,
        "MCP_INTROSPECTION_CACHE_TTL": "0",  # every call introspects
        "MCP_REVOCATION_EVENTS": "off",  # no stream reconnecting across the restarts
    }
    rs = start_resource_server(tmp, port, env)
    yield Stack(provider, rs, mcp_url)
    rs.stop()
    provider.process.stop()


def test_the_call_after_a_provider_restart_is_served(stack: Stack):
    """The RS keeps a connection to the provider open between calls; the provider restarting
    closes it. The next call is answered (a new connection), not a 500, not a hang."""
    token = stack.token()
    assert stack.served_again(token).status_code == 200
    before = stack.introspections()
    stack.provider.restart()
    response = stack.call(token)
    assert response.status_code == 200, response.text
    assert '"isError":false' in response.text.replace(" ", "")
    assert stack.introspections() == before + 1  # really asked the restarted provider


def test_a_call_while_the_provider_is_down_is_503_and_then_served(stack: Stack):
    token = stack.token()
    assert stack.served_again(token).status_code == 200
    stack.provider.process.stop()
    try:
        down = stack.call(token)
        assert down.status_code == 503, down.text
        assert int(down.headers["Retry-After"]) >= 1
    finally:
        stack.provider.process.start()
    assert stack.served_again(token).status_code == 200


# -- a scripted HTTP/1.1 server -----------------------------------------------------------------

OK = b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"active":true}'
Script = Callable[[int, int], Awaitable[bytes | None]]
"""(request number, connection number) → the raw answer; None closes without one."""


async def request_body(reader: asyncio.StreamReader) -> bytes:
    """The body of the next request on `reader` (the poster always sends Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


@dataclass
class Scripted:
    script: Script
    connections: int = 0
    requests: int = 0
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        try:
            while True:
                self.bodies.append(await request_body(reader))
                self.requests += 1
                answer = await self.script(self.requests, connection)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if answer.startswith(b"HTTP/1.0"):
                    break  # its answers end with the connection
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            writer.close()


def posting(script: Script, posts: int, timeout: float = 5.0) -> tuple[Scripted, list[object]]:
    """`posts` form posts, one after another, to a server answering by `script`; what each
    returned (the Answer) or raised (the exception)."""
    server = Scripted(script)

    async def run() -> list[object]:
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        poster = FormPoster(f"http://127.0.0.1:{port}/introspect", {}, timeout=timeout)
        outcomes: list[object] = []
        try:
            for number in range(posts):
                try:
                    outcomes.append(await poster.post(b"token=t%d" % number))
                except ExchangeFailed as failed:
                    outcomes.append(failed)
        finally:
            await poster.aclose()
            listening.close()
        return outcomes

    return server, asyncio.run(run())


async def always(answer: bytes) -> bytes:
    return answer


def test_one_connection_serves_every_call():
    server, outcomes = posting(lambda n, c: always(OK), 20)
    assert [o.json() for o in outcomes] == [{"active": True}] * 20  # type: ignore[attr-defined]
    assert server.connections == 1
    assert server.bodies == [b"token=t%d" % n for n in range(20)]


def test_a_connection_the_server_closes_unanswered_is_retried_once_on_a_new_one():
    """The race a keep-alive client always has: the server closes an idle connection just as
    a request goes out on it. Introspection changes nothing, so it is asked again."""

    async def close_every_second_request(number: int, _connection: int) -> bytes | None:
        return None if number % 2 == 0 else OK

    server, outcomes = posting(close_every_second_request, 3)
    assert all(getattr(o, "status", None) == 200 for o in outcomes), outcomes
    assert server.requests == 5 and server.connections == 3


def test_a_server_that_never_answers_is_an_exchange_failure_not_a_hang():
    async def close_always(_number: int, _connection: int) -> None:
        return None

    server, outcomes = posting(close_always, 1)
    assert isinstance(outcomes[0], ExchangeFailed)
    assert server.requests == 1  # a new connection failing is not retried

    async def silent(_number: int, _connection: int) -> bytes:
        await asyncio.sleep(3600)
        return OK

    _, outcomes = posting(silent, 1, timeout=0.5)
    assert isinstance(outcomes[0], ExchangeFailed) and "no answer within" in str(outcomes[0])


def test_chunked_and_close_delimited_answers_are_read_whole():
    chunks = b'7\r\n{"activ\r\n8\r\ne":true}\r\n0\r\n\r\n'
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    closing = b'HTTP/1.0 200 OK\r\n\r\n{"active":false}'
    server, outcomes = posting(lambda n, c: always(chunked), 2)
    assert [o.json() for o in outcomes] == [{"active": True}] * 2  # type: ignore[attr-defined]
    assert server.connections == 1
    server, outcomes = posting(lambda n, c: always(closing), 2)
    assert [o.json() for o in outcomes] == [{"active": False}] * 2  # type: ignore[attr-defined]
    assert server.connections == 2  # an answer framed by the close ends its connection


def test_an_idle_connection_holding_unread_bytes_is_not_reused():
    """Bytes the server sent unasked after an answer (here a 408 before it closes) must never
    be read as the next request's answer: that connection is dropped, the next post gets its
    own answer on a new one."""
    stray = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    async def answer_then_stray(number: int, _connection: int) -> bytes:
        return OK + stray if number == 1 else OK

    server, outcomes = posting(answer_then_stray, 2)
    assert [getattr(o, "status", o) for o in outcomes] == [200, 200]
    assert server.connections == 2


def answer_about(body: bytes) -> bytes:
    """An active answer that names the request body it answers."""
    about = b'{"active":true,"about":"%s"}' % body
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(about), about)


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


@pytest.mark.parametrize("split", ["head-then-late-body", "103-then-late-final-answer"])
def test_a_connection_left_mid_answer_is_closed_and_the_next_post_gets_its_own_answer(split):
    """The first answer starts in time, but its rest comes after the poster's deadline: only
    once a NEXT request arrives on the same connection, so a reused connection shows. After
    the timeout the pool is empty, and the next post (another token) gets its own answer,
    never the rest of the first one: that would be response smuggling (token t1 answered
    with t0's answer) or an outage (t0's body parsed as t1's status line)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                body = await request_body(reader)
                answer = answer_about(body)
                if body == b"token=t0":
                    head, _, rest = answer.partition(b"\r\n\r\n")
                    early, late = (
                        (head + b"\r\n\r\n", rest)
                        if split == "head-then-late-body"
                        else (EARLY_HINTS, answer)
                    )
                    writer.write(early)
                    await writer.drain()
                    answer = late + answer_about(await request_body(reader))
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client closed the connection, or the test is over
        finally:
            writer.close()

    async def run() -> tuple[int, object]:
        listening = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        poster = FormPoster(f"http://127.0.0.1:{port}/introspect", {}, timeout=0.5)
        try:
            with pytest.raises(ExchangeFailed, match="no answer within"):
                await poster.post(b"token=t0")  # the rest never comes before the deadline
            pooled = len(poster._idle)
            poster.timeout = 30.0  # the second post's deadline is no test of speed
            try:
                second: object = await poster.post(b"token=t1")
            except ExchangeFailed as failed:
                second = failed
        finally:
            await poster.aclose()
            listening.close()
        return pooled, second

    pooled, second = asyncio.run(run())
    assert getattr(second, "body", second) == b'{"active":true,"about":"token=t1"}'
    assert pooled == 0


RESET_MID_ANSWER = b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"act'


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000002\r\n\r\n{}" + b" " * 2_000_000,
        b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"active":true}',  # cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        RESET_MID_ANSWER,
        # RFC 9110 §15.2: 101 is no interim answer; an answer after it is not this request's
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + OK,
        # RFC 9112 §7.1: a chunk size is 1*HEXDIG (int(_, 16) would take all of these)
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0xf\r\n{"active":true}\r\n0\r\n\r\n',
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+f\r\n{"active":true}\r\n0\r\n\r\n',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-0\r\n\r\n",
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0_f\r\n{"active":true}\r\n0\r\n\r\n',
        # RFC 9110 §8.6: Content-Length is 1*DIGIT, once
        b'HTTP/1.1 200 OK\r\nContent-Length: +15\r\n\r\n{"active":true}',
        b'HTTP/1.1 200 OK\r\nContent-Length: 1_5\r\n\r\n{"active":true}',
        b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\nContent-Length: 15\r\n\r\n{"active":true}',
        b'HTTP/1.1 200 OK\r\nContent-Length: 99\r\nContent-Length: 15\r\n\r\n{"active":true}',
        # RFC 9112 §6.3: both framings, or a coding other than chunked alone
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'f\r\n{"active":true}\r\n0\r\n\r\n',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b'f\r\n{"active":true}\r\n0\r\n\r\n',
    ],
    ids=[
        "not-http",
        "too-large",
        "cut-short",
        "bad-chunk",
        "bad-header",
        "reset-mid-answer",
        "101-then-answer",
        "chunk-size-0x",
        "chunk-size-plus",
        "chunk-size-negative",
        "chunk-size-underscore",
        "content-length-plus",
        "content-length-underscore",
        "content-length-twice",
        "content-length-conflicting",
        "content-length-and-chunked",
        "coding-not-chunked-alone",
    ],
)
def test_a_broken_answer_is_an_exchange_failure(answer: bytes):
    """Whatever the server sends, then closes (or resets): never taken for an answer, never a
    hang, and its connection is closed, never pooled for the next request."""

    async def run() -> tuple[object, int]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.read(100)  # the body
            writer.write(answer)
            await writer.drain()
            if answer is RESET_MID_ANSWER:  # close with a RST, not a FIN
                linger = struct.pack("ii", 1, 0)
                writer.get_extra_info("socket").setsockopt(SOL_SOCKET, SO_LINGER, linger)
            writer.close()

        listening = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        poster = FormPoster(f"http://127.0.0.1:{port}/introspect", {}, timeout=5)
        try:
            return await poster.post(b"token=t"), len(poster._idle)
        except ExchangeFailed as failed:
            return failed, len(poster._idle)
        finally:
            listening.close()

    outcome, pooled = asyncio.run(run())
    assert isinstance(outcome, ExchangeFailed), outcome
    assert pooled == 0
