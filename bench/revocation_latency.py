#!/usr/bin/env python3
"""Revocation-to-refusal latency through the provider's security event stream (issue 13).

    python bench/revocation_latency.py              # 100 revocations per setup, ~6 minutes
    python bench/revocation_latency.py --quick      # 20 revocations, shorter TTL comparison

For each token format (opaque tokens checked by introspection; JWTs checked locally) and each
database (SQLite; two replicas sharing PostgreSQL, revocations alternating between them, the
resource server receiving from replica A): a resource server with its default settings, normal
tool traffic from four threads with other users' tokens all along, and N revocations, each of
a token the server has just accepted (so its answer is cached for 300 s, or its JWT verifies
for an hour). The latency is from the moment the revocation endpoint answered (the revocation
committed) until the first refused tool call; calls are made every 5 ms.

Then the introspection calls the longer TTL saves: two resource servers on one provider, one
with the event stream (answers kept 300 s), one without it (MCP_REVOCATION_EVENTS=off: 60 s),
the same tokens each used once a second for the same period; their introspection counters.

Prints the tables and writes bench/results/revocation_latency.json. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mcp_oauth.client.headless import obtain_tokens  # noqa: E402
from tests.conftest import RS_SECRET as SECRET  # noqa: E402
from tests.conftest import (  # noqa: E402
    new_postgres_database,
    start_provider,
    start_resource_server,
)
from tests.support import free_port  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 150)
HEADERS = {"Accept": "application/json, text/event-stream"}
BODY = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "get_user_profile", "arguments": {}},
}
BACKGROUND_THREADS = 4


def call(http: httpx.Client, mcp_url: str, token: str) -> int:
    headers = {**HEADERS, "Authorization": f"Bearer {token}"}
    return http.post(mcp_url, json=BODY, headers=headers).status_code


def tokens(issuer: str, mcp_url: str, username: str, password: str, count: int) -> list[dict]:
    async def many() -> list[dict]:
        return [
            await obtain_tokens(issuer, username, password, scope="read", resource=mcp_url)
            for _ in range(count)
        ]

    return asyncio.run(many())


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def rs_metrics(mcp_url: str) -> dict:
    return httpx.get(mcp_url.removesuffix("/mcp") + "/metrics").json()


def wait_until_healthy(mcp_url: str, timeout: float = 60) -> None:
    until = time.monotonic() + timeout
    while rs_metrics(mcp_url)["revocation_events"]["state"] != "healthy":
        if time.monotonic() > until:
            raise RuntimeError(f"event stream not healthy: {rs_metrics(mcp_url)}")
        time.sleep(0.05)


class Traffic:
    """Normal tool traffic with live tokens, from a few threads, while revocations happen."""

    def __init__(self, mcp_url: str, live: list[str]):
        self.mcp_url, self.live = mcp_url, live
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.run, args=(i,)) for i in range(BACKGROUND_THREADS)
        ]

    def run(self, offset: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = offset
            while not self.stop.is_set():
                status = call(http, self.mcp_url, self.live[i % len(self.live)])
                with self.lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                i += BACKGROUND_THREADS

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def measure(mode: str, database: str, count: int, tmp: Path) -> dict:
    """N revocations interleaved with normal traffic, on one setup (see the docstring)."""
    port = free_port()
    mcp_url = f"http://127.0.0.1:{port}/mcp"
    args = ["--access-token-format", "jwt", "--log-level", "warning"]
    args = args if mode == "jwt" else args[2:]
    with ExitStack() as cleanup:
        url = None
        if database == "postgresql":
            url = cleanup.enter_context(new_postgres_database("bench_revocation"))
        a = start_provider(tmp, url, resource=mcp_url, args=args)
        cleanup.callback(a.process.stop)
        replicas = [a]
        if database == "postgresql":
            b = start_provider(tmp, url, resource=mcp_url, args=[*args, "--issuer", a.url])
            cleanup.callback(b.process.stop)
            replicas.append(b)
        env = {"OAUTH_PROVIDER_URL": a.url, "MCP_RS_CLIENT_SECRET": SECRET}
        rs = start_resource_server(tmp, port, {**env, "MCP_TOKEN_VALIDATION": mode})
        cleanup.callback(rs.stop)
        wait_until_healthy(mcp_url)
        victims = [t["access_token"] for t in tokens(a.url, mcp_url, "alice", "password123", count)]
        live = [t["access_token"] for t in tokens(a.url, mcp_url, "bob", "secret456", 20)]
        latencies: list[float] = []
        with Traffic(mcp_url, live) as traffic, httpx.Client(timeout=30) as http:
            for i, token in enumerate(victims):
                assert call(http, mcp_url, token) == 200  # accepted: now cached / verified
                replica = replicas[i % len(replicas)]
                form = {"token": token, "client_id": "mcp-client"}
                assert http.post(f"{replica.url}/revoke", data=form).status_code == 200
                committed = time.monotonic()
                while call(http, mcp_url, token) == 200:
                    if time.monotonic() - committed > 60:
                        raise RuntimeError("a revoked token was still accepted after 60 s")
                    time.sleep(0.005)
                latencies.append(time.monotonic() - committed)
        metrics = rs_metrics(mcp_url)
    return {
        "mode": mode,
        "database": database + (" (2 replicas)" if database == "postgresql" else ""),
        "revocations": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies), 1),
        "background_calls": sum(traffic.statuses.values()),
        "background_statuses": traffic.statuses,
        "events_applied": metrics["revocation_events"]["events_applied"],
        "refused_by_event": metrics["revocation_events"]["refused_by_event"],
    }


def introspections_saved(duration: float, users: int, tmp: Path) -> dict:
    """The same tokens used once a second for `duration` s at two resource servers: one with
    the event stream (answers kept 300 s), one without (60 s)."""
    ports = {"events": free_port(), "no_events": free_port()}
    urls = {name: f"http://127.0.0.1:{port}/mcp" for name, port in ports.items()}
    with ExitStack() as cleanup:
        provider = start_provider(
            tmp, resource=",".join(urls.values()), args=["--log-level", "warning"]
        )
        cleanup.callback(provider.process.stop)
        env = {"OAUTH_PROVIDER_URL": provider.url, "MCP_RS_CLIENT_SECRET": SECRET}
        extra = {"events": {}, "no_events": {"MCP_REVOCATION_EVENTS": "off"}}
        for name, port in ports.items():
            rs = start_resource_server(tmp, port, {**env, **extra[name]})
            cleanup.callback(rs.stop)
        wait_until_healthy(urls["events"])
        held = {
            name: [
                t["access_token"] for t in tokens(provider.url, url, "alice", "password123", users)
            ]
            for name, url in urls.items()
        }
        before = {
            name: rs_metrics(url)["token_verifier"]["introspections"] for name, url in urls.items()
        }
        started = time.monotonic()
        with httpx.Client(timeout=30) as http:
            while time.monotonic() - started < duration:
                tick = time.monotonic()
                for name, url in urls.items():
                    for token in held[name]:
                        assert call(http, url, token) == 200
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        after = {
            name: rs_metrics(url)["token_verifier"]["introspections"] for name, url in urls.items()
        }
    counted = {name: after[name] - before[name] for name in urls}
    return {
        "duration_s": duration,
        "tokens": users,
        "calls_per_token_per_s": 1,
        "introspections_with_events_300s": counted["events"],
        "introspections_without_events_60s": counted["no_events"],
        "saved_fraction": round(1 - counted["events"] / counted["no_events"], 3)
        if counted["no_events"]
        else None,
        "per_token_hour_with_events": 3600 // 300,
        "per_token_hour_without_events": 3600 // 60,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 revocations, a 130 s comparison")
    parser.add_argument("--revocations", type=int, default=None)
    args = parser.parse_args(argv)
    count = args.revocations or (20 if args.quick else 100)
    duration = 130.0 if args.quick else 190.0
    results: dict = {"latency": [], "introspections": None}
    with tempfile.TemporaryDirectory(prefix="bench-revocation-") as folder:
        tmp = Path(folder)
        for database in ("sqlite", "postgresql"):
            for mode in ("introspection", "jwt"):
                console.print(f"[bold]{mode} on {database}[/]: {count} revocations")
                results["latency"].append(measure(mode, database, count, tmp))
        console.print(f"[bold]introspection calls[/] over {duration:.0f} s, 300 s vs 60 s")
        results["introspections"] = introspections_saved(duration, 10, tmp)
    table = Table(title="Revocation to refusal (from the revocation's answer to the first 401)")
    for column in (
        "mode",
        "database",
        "revocations",
        "p50 ms",
        "p99 ms",
        "max ms",
        "background calls",
    ):
        table.add_column(column)
    for row in results["latency"]:
        table.add_row(
            row["mode"],
            row["database"],
            str(row["revocations"]),
            str(row["p50_ms"]),
            str(row["p99_ms"]),
            str(row["max_ms"]),
            f"{row['background_calls']} {row['background_statuses']}",
        )
    console.print(table)
    console.print(results["introspections"])
    out = ROOT / "bench" / "results" / "revocation_latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
