"""The provider's responses leave in one socket write (mcp_oauth/provider/coalesced_writes.py).

uvicorn's own httptools protocol is driven here with a transport that records each write the
socket would get: deterministic, unlike counting TCP segments at a client. The same request
through uvicorn's unmodified protocol shows the two writes this saves (and that the recording
sees them)."""

from __future__ import annotations

import asyncio

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from mcp_oauth.provider.coalesced_writes import CoalescingHttpToolsProtocol, CoalescingTransport
from mcp_oauth.provider.serving import uvicorn_options
from mcp_oauth.provider.settings import parse_settings

ANSWER = {"active": True, "scope": "read"}
CHUNKS = [b"first,", b"second,", b"third"]


async def _json(_request):
    return JSONResponse(ANSWER)


async def _stream(_request):
    async def chunks():
        for chunk in CHUNKS:
            await asyncio.sleep(0.01)  # each chunk in a later turn of the loop
            yield chunk

    return StreamingResponse(chunks(), media_type="text/plain")


APP = Starlette(routes=[Route("/json", _json, methods=["POST"]), Route("/stream", _stream)])


class RecordingTransport(asyncio.Transport):
    """What the socket would be asked to do, in order."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data):
        self.events.append(("write", bytes(data)))

    def close(self):
        self.events.append(("close", b""))
        self.closing = True

    def is_closing(self):
        return self.closing

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 9000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    @property
    def written(self) -> bytes:
        return b"".join(data for kind, data in self.events if kind == "write")


def _serve(protocol_class, request: bytes, ends_with: bytes) -> RecordingTransport:
    """`request` through `protocol_class` until what was written ends with `ends_with`."""

    async def run() -> RecordingTransport:
        config = uvicorn.Config(APP, log_level="warning", lifespan="off")
        protocol = protocol_class(config, ServerState(), {})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(request)
        deadline = asyncio.get_running_loop().time() + 10
        while not transport.written.endswith(ends_with):
            assert asyncio.get_running_loop().time() < deadline, transport.events
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # anything still to be written or closed
        seen = RecordingTransport()
        seen.events = list(transport.events)  # before the connection's end closes it
        protocol.connection_lost(None)
        return seen

    return asyncio.run(run())


def _post_json(connection: str = "keep-alive") -> bytes:
    return (
        b"POST /json HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
        + f"Connection: {connection}\r\n\r\n".encode()
    )


BODY = b'{"active":true,"scope":"read"}'


def test_a_response_head_and_body_leave_in_one_write():
    transport = _serve(CoalescingHttpToolsProtocol, _post_json(), BODY)
    assert [kind for kind, _ in transport.events] == ["write"]
    ((_, data),) = transport.events
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n" + BODY)


def test_uvicorns_own_protocol_writes_the_head_and_the_body_apart():
    transport = _serve(HttpToolsProtocol, _post_json(), BODY)
    assert [kind for kind, _ in transport.events] == ["write", "write"]
    assert transport.events[1] == ("write", BODY)


def test_a_closing_connection_gets_its_response_before_the_close():
    transport = _serve(CoalescingHttpToolsProtocol, _post_json("close"), BODY)
    assert [kind for kind, _ in transport.events] == ["write", "close"]
    assert transport.events[0][1].endswith(BODY)


def test_a_streamed_response_arrives_whole_and_in_order():
    request = b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    transport = _serve(CoalescingHttpToolsProtocol, request, b"0\r\n\r\n")
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in CHUNKS) + b"0\r\n\r\n"


def test_nothing_is_written_once_the_peer_has_gone():
    async def run() -> RecordingTransport:
        inner = RecordingTransport()
        transport = CoalescingTransport(inner)
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        inner.closing = True  # the connection was lost before the turn ended
        await asyncio.sleep(0)
        return inner

    assert asyncio.run(run()).events == []


def test_the_provider_is_served_through_the_coalescing_protocol():
    settings = parse_settings(["--port", "9000"])
    assert uvicorn_options(settings)["http"] is CoalescingHttpToolsProtocol
