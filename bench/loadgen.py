"""The benchmarks' load generator: HTTP/1.1 keep-alive connections on asyncio, in its own process.

    python bench/loadgen.py < spec.json      # prints one JSON result line

It runs beside the servers on the same cores, so it is kept lean: requests are encoded once,
responses are read with a minimal parser (Content-Length or chunked), and no HTTP library sits
in the hot loop. Every worker stops at the deadline or after `max_requests` in total, whichever
comes first, and the whole run is cut off by a hard timeout.

Spec (JSON):
    host, port, connections, warmup, duration (seconds), max_requests
    expect_status: [200]        responses with another status count as errors
    expect_body: "..."          a substring every good response body contains (optional)
    mode "cycle":  requests: [{method, path, headers, body}]    sent round robin
    mode "chain":  request: {... "{token}" in body}, tokens: [one per connection at least],
                   next_token: regex whose group 1 in a response is the next token to send
    mode "login":  path (an /authorize URL), username, password: GET the login page, POST
                   its form without a cookie from before: one new sign-in per request
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent

HARD_TIMEOUT_MARGIN = 30.0  # seconds past the planned end before the run is abandoned


def encode(host: str, request: dict) -> bytes:
    body = request.get("body", "").encode()
    lines = [f"{request['method']} {request['path']} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in request.get("headers", {}).items()]
    if body or request["method"] == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class Connection:
    """One keep-alive connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, raw: bytes) -> Response:
        if self.writer is None:
            await self.connect()
        assert self.reader and self.writer
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            body = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = await self._chunked()
        else:
            body = await self.reader.read()
            headers[b"connection"] = b"close"
        if headers.get(b"connection") == b"close":
            self.close()
        return Response(int(status_line.split(b" ", 2)[1]), headers, body)

    async def _chunked(self) -> bytes:
        assert self.reader
        chunks = []
        for _ in range(100_000):
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await self.reader.readexactly(size + 2))
            if size == 0:
                return b"".join(chunk[:-2] for chunk in chunks)
        raise ValueError("too many chunks")


@dataclass
class Stats:
    measure_from: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    issued: int = 0
    ok_total: int = 0  # good responses including the warm-up (to check what was stored)
    statuses: dict[int, int] = field(default_factory=dict)
    first_error: str = ""

    def record(self, started: float, ok: bool, status: int, detail: str = "") -> None:
        self.ok_total += ok
        if started < self.measure_from:
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if ok:
            self.latencies.append(time.perf_counter() - started)
        else:
            self.errors += 1
            self.first_error = self.first_error or detail[:300]


class Run:
    def __init__(self, spec: dict):
        self.spec = spec
        self.host = f"{spec['host']}:{spec['port']}"
        self.expect_status = set(spec.get("expect_status", [200]))
        self.expect_body = spec.get("expect_body", "").encode()
        self.max_requests = spec.get("max_requests", 10_000_000)
        self.connections = spec["connections"]
        self.encoded = [encode(self.host, r) for r in spec.get("requests", [])]

    def good(self, response: Response) -> bool:
        return response.status in self.expect_status and self.expect_body in response.body

    def more(self, stats: Stats) -> bool:
        """Bounded in count and in time: the one loop condition of every worker."""
        if stats.issued >= self.max_requests or time.perf_counter() >= self.end:
            return False
        stats.issued += 1
        return True

    async def cycle(self, conn: Connection, index: int, stats: Stats) -> None:
        # Connection i sends requests i, i + connections, ...: no two connections share one
        # request (a token) when there are at least as many requests as connections.
        for turn in itertools.count():
            if not self.more(stats):
                break
            raw = self.encoded[(index + turn * self.connections) % len(self.encoded)]
            started = time.perf_counter()
            response = await conn.send(raw)
            stats.record(started, self.good(response), response.status, response.body.decode())

    async def chain(self, conn: Connection, index: int, stats: Stats) -> None:
        template, pattern = self.spec["request"], re.compile(self.spec["next_token"].encode())
        token = self.spec["tokens"][index]
        while token and self.more(stats):
            raw = encode(self.host, {**template, "body": template["body"].format(token=token)})
            started = time.perf_counter()
            response = await conn.send(raw)
            match = pattern.search(response.body) if response.status == 200 else None
            token = match.group(1).decode() if match else None
            ok = self.good(response) and match is not None
            stats.record(started, ok, response.status, response.body.decode())

    async def login(self, conn: Connection, index: int, stats: Stats) -> None:
        sys.path.insert(0, str(ROOT))
        from mcp_oauth.client.headless import parse_page  # the forms read as the client reads them

        spec = self.spec
        while self.more(stats):
            started = time.perf_counter()
            page = await conn.send(encode(self.host, {"method": "GET", "path": spec["path"]}))
            cookie = page.headers.get(b"set-cookie", b"").split(b";")[0].decode()
            forms = parse_page(page.body.decode()).forms
            if page.status != 200 or not forms:
                stats.record(started, False, page.status, page.body.decode())
                continue
            form = dict(forms[0].fields) | {"username": spec["username"]}
            form["password"] = spec["password"]
            post = {
                "method": "POST",
                "path": forms[0].action or "/login",
                "headers": {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Cookie": cookie,
                },
                "body": urlencode(form),
            }
            response = await conn.send(encode(self.host, post))
            stats.record(started, self.good(response), response.status, response.body.decode())

    async def main(self) -> dict:
        spec = self.spec
        worker = {"cycle": self.cycle, "chain": self.chain, "login": self.login}[spec["mode"]]
        conns = [Connection(spec["host"], spec["port"]) for _ in range(spec["connections"])]
        await asyncio.gather(*(conn.connect() for conn in conns))
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        stats = Stats(measure_from=start + spec.get("warmup", 0.0))
        self.end = stats.measure_from + spec["duration"]
        hard_timeout = self.end - start + HARD_TIMEOUT_MARGIN
        async with asyncio.timeout(hard_timeout):
            outcomes = await asyncio.gather(
                *(worker(conn, i, stats) for i, conn in enumerate(conns)), return_exceptions=True
            )
        finished = time.perf_counter()
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        for conn in conns:
            conn.close()
        failures = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        elapsed = max(min(finished, self.end) - stats.measure_from, 1e-9)
        cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (
            cpu_before.ru_utime + cpu_before.ru_stime
        )
        return summarize(stats, elapsed, cpu / (finished - start), failures)


def percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def summarize(stats: Stats, elapsed: float, cpu_share: float, failures: list[str]) -> dict:
    ordered = sorted(stats.latencies)
    return {
        "requests": len(ordered),
        "errors": stats.errors,
        "ok_total": stats.ok_total,
        "seconds": round(elapsed, 3),
        "rps": round(len(ordered) / elapsed, 1),
        "p50_ms": percentile(ordered, 0.50),
        "p90_ms": percentile(ordered, 0.90),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] * 1000 if ordered else None,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "loadgen_cpu": round(cpu_share, 3),
        "first_error": stats.first_error,
        "worker_failures": failures[:3],
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(Run(json.load(sys.stdin)).main())))
