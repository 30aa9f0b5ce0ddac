#!/usr/bin/env python3
"""Benchmarks of the provider and the resource server, against node oidc-provider and bare
Starlette / FastMCP baselines measured in the same run.

    python bench/run.py            # full run, about five minutes
    python bench/run.py --quick    # smoke run, under a minute (numbers only indicative)

Every server is a subprocess on a free loopback port; load comes from bench/loadgen.py in
another process, which shares the machine's cores with the servers. The scenarios that are
compared with each other run interleaved, in rounds (A B C, A B C, ...), and each figure is
the median over the rounds, so a neighbour's load hits both sides of a ratio alike. Prints
the table and the targets (met / not met) and writes everything to bench/results/latest.json
(and the tables as Markdown to latest.md).
Nothing here asserts on time: it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402
from argon2 import extract_parameters  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import stack  # noqa: E402
from tests.support import free_port  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 150)
STARTED = time.monotonic()


def phase(text: str) -> None:
    console.print(f"[bold]{text}[/] [dim](at {time.monotonic() - STARTED:.0f} s)[/]")


LOADGEN = ROOT / "bench" / "loadgen.py"
TOOL = "get_user_profile"
# What every good answer contains: an active token, an issued token, a tool result.
ACTIVE, ISSUED, TOOL_OK = '"active":true', '"access_token"', '"isError":false'


# -- requests, as the load generator takes them -------------------------------------------------


def form_post(url: str, form: dict[str, str], auth: tuple[str, str] | None = None) -> dict:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    return {
        "method": "POST",
        "path": urlsplit(url).path,
        "headers": headers,
        "body": urlencode(form),
    }


def tool_call(mcp_url: str, token: str | None) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": TOOL}}
    return {
        "method": "POST",
        "path": urlsplit(mcp_url).path,
        "headers": headers,
        "body": json.dumps(body),
    }


def cc_form(resource: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "scope": "read write", "resource": resource}


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    label: str
    url: str
    pids: list[int]
    spec: dict
    renew: Callable[[], dict] | None = None  # fresh spec entries (tokens) before each run

    def current_spec(self) -> dict:
        return (self.spec | self.renew()) if self.renew else self.spec


@dataclass
class Bench:
    connections: int
    warmup: float
    duration: float
    rounds: int
    results: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def measure(self, s: Scenario) -> dict:
        """One run of the load generator, with the servers' CPU use over it."""
        parts = urlsplit(s.url)
        spec = {
            "host": parts.hostname,
            "port": parts.port,
            "connections": self.connections,
            "warmup": self.warmup,
            "duration": self.duration,
            **s.current_spec(),
        }
        cpu_before, started = stack.cpu_seconds(s.pids), time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(LOADGEN)],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=spec["warmup"] + spec["duration"] + 90,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed on {s.name}:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout)
        elapsed = time.perf_counter() - started
        cpu = stack.cpu_seconds(s.pids) - cpu_before
        result["server_cpu"] = round(cpu / elapsed, 3)
        # CPU per request: unlike req/s, it barely moves when other work shares the cores.
        result["server_cpu_ms"] = round(1000 * cpu / max(result["ok_total"], 1), 3)
        result.update(label=s.label, connections=spec["connections"])
        return result

    def once(self, s: Scenario) -> dict:
        result = self.results[s.name] = self.measure(s)
        self.show(result)
        return result

    def interleaved(self, scenarios: list[Scenario]) -> None:
        """Every scenario once per round, in turn; keep the median of the rounds."""
        runs: dict[str, list[dict]] = {s.name: [] for s in scenarios}
        for number in range(self.rounds):
            phase(f"round {number + 1}/{self.rounds}")
            for s in scenarios:
                runs[s.name].append(self.show(self.measure(s)))
        for name, rounds in runs.items():
            self.results[name] = combine(rounds)

    @staticmethod
    def show(result: dict) -> dict:
        trouble = result["errors"] or result["worker_failures"]
        problem = f"  [red]{result['errors']} errors {result['first_error'][:100]}[/]"
        console.print(
            f"  {result['label']:<46} {result['rps']:>9.1f} req/s" + (problem if trouble else "")
        )
        return result


def prime(s: Scenario) -> None:
    """Every distinct request once before any measuring: a fresh server's first calls, and
    a token's first call (its introspection), pay one-time costs. Also a smoke check."""
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(s.url))
    with httpx.Client(base_url=origin, timeout=30) as http:
        for request in s.current_spec()["requests"][:64]:
            response = http.request(
                request["method"],
                request["path"],
                headers=request["headers"],
                content=request["body"],
            )
            if response.status_code != 200:
                raise RuntimeError(f"{s.label}: HTTP {response.status_code} {response.text[:300]}")


def combine(rounds: list[dict]) -> dict:
    """Median over the rounds of each figure; counts add up; the per-round rates are kept."""
    combined = dict(rounds[-1])
    for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "server_cpu", "server_cpu_ms", "loadgen_cpu"):
        values = [r[key] for r in rounds if r[key] is not None]
        combined[key] = statistics.median(values) if values else None
    for key in ("requests", "errors", "ok_total"):
        combined[key] = sum(r[key] for r in rounds)
    combined["max_ms"] = max((r["max_ms"] or 0) for r in rounds)
    combined["rounds_rps"] = [r["rps"] for r in rounds]
    return combined


# -- the servers -------------------------------------------------------------------------------


@dataclass
class Servers:
    peer: object
    bare_starlette: object
    bare_mcp: object
    provider: object
    rs: dict[str, object]  # "cached", "uncached", and "jwt" when the RS has a JWT mode
    jwt_provider: object | None
    urls: dict[str, str]


def jwt_mode_env() -> dict[str, str] | None:
    """The resource server's setting for local JWT validation, once it has one."""
    source = (ROOT / "mcp_resource_server.py").read_text()
    return {"MCP_TOKEN_VALIDATION": "jwt"} if "MCP_TOKEN_VALIDATION" in source else None


def stop_peer(started: Future) -> None:
    if started.exception() is None:
        started.result().stop()


def start_servers(exits: ExitStack, tmp: Path, ttl: float, notes: list[str]) -> Servers:
    """Everything up at once (started in parallel); all stopped when `exits` closes."""
    urls = {mode: f"http://127.0.0.1:{free_port()}/mcp" for mode in ("cached", "uncached", "jwt")}
    jwt_env = jwt_mode_env()
    if jwt_env is None:
        notes.append(
            "JWT mode skipped: mcp_resource_server.py has no MCP_TOKEN_VALIDATION setting "
            "(no JWT validation mode yet)"
        )
    provider = stack.provider(tmp, [urls["cached"], urls["uncached"]])
    jwt_provider = stack.provider(tmp, [urls["jwt"]], "jwt") if jwt_env else None
    processes = {
        "bare_starlette": stack.bench_script(tmp, "bare_starlette.py", "/"),
        "bare_mcp": stack.bench_script(tmp, "bare_mcp.py", "/ready"),
        "provider": provider,
        "cached": stack.resource_server(
            tmp, urls["cached"], provider.url, {"MCP_INTROSPECTION_CACHE_TTL": str(ttl)}
        ),
        "uncached": stack.resource_server(
            tmp, urls["uncached"], provider.url, {"MCP_INTROSPECTION_CACHE_TTL": "0"}
        ),
    }
    if jwt_provider and jwt_env:
        processes["jwt_provider"] = jwt_provider
        processes["jwt"] = stack.resource_server(tmp, urls["jwt"], jwt_provider.url, jwt_env)
    for process in processes.values():
        exits.callback(process.stop)
    with ThreadPoolExecutor(len(processes) + 1) as pool:
        peer_future = pool.submit(stack.start_peer, tmp, urls["cached"])
        exits.callback(stop_peer, peer_future)  # also when another server fails to start
        for future in [pool.submit(p.start, 120.0) for p in processes.values()]:
            future.result()
        peer = peer_future.result()
    rs = {mode: processes[mode] for mode in ("cached", "uncached", "jwt") if mode in processes}
    return Servers(
        peer, processes["bare_starlette"], processes["bare_mcp"], provider, rs, jwt_provider, urls
    )


# -- the scenarios -----------------------------------------------------------------------------


def compared_scenarios(servers: Servers, connections: int, pool: int) -> list[Scenario]:
    """The scenarios whose figures are set against each other (run interleaved); the
    introspection runs cycle through `pool` tokens."""
    peer, provider, bare = servers.peer, servers.provider, servers.bare_starlette
    issuer, rs_url = provider.url, servers.urls["cached"]
    rs_auth = (stack.RS_CLIENT_ID, stack.RS_SECRET)
    ours = stack.our_client_credentials(issuer, rs_url, pool)
    our_introspections = [form_post(f"{issuer}/introspect", {"token": t}, rs_auth) for t in ours]
    our_cc = form_post(f"{issuer}/token", cc_form(rs_url), rs_auth)
    peer_client = (stack.BENCH_CLIENT_ID, peer.client_secret)
    peer_cc = form_post(peer.token_endpoint, cc_form(peer.resource), peer_client)

    def peer_introspections() -> dict:
        # oidc-provider's in-memory store is an LRU of 1000 entries: the client_credentials
        # runs in between evict earlier tokens, so each run gets new ones.
        auth = (stack.RS_CLIENT_ID, peer.rs_client_secret)
        tokens = stack.peer_client_credentials(peer, pool)
        return {
            "requests": [form_post(peer.introspection_endpoint, {"token": t}, auth) for t in tokens]
        }

    peer_pids, our_pids = [peer.process.pid], [provider.proc.pid]
    scenarios = [
        Scenario("peer_introspection", "oidc-provider: introspection", peer.issuer, peer_pids,
                 cycle(ACTIVE, []), renew=peer_introspections),
        Scenario("introspection", "provider: introspection", issuer, our_pids,
                 cycle(ACTIVE, our_introspections)),
        Scenario("bare_starlette", "bare Starlette: form → JSON", bare.url, [bare.proc.pid],
                 cycle(ACTIVE, [form_post(f"{bare.url}/form", {"token": ours[0]})])),
        Scenario("peer_client_credentials", "oidc-provider: client_credentials", peer.issuer,
                 peer_pids, cycle(ISSUED, [peer_cc])),
        Scenario("client_credentials", "provider: client_credentials", issuer, our_pids,
                 cycle(ISSUED, [our_cc])),
    ]  # fmt: skip
    return scenarios + tool_scenarios(servers, connections)


def tool_scenarios(servers: Servers, connections: int) -> list[Scenario]:
    """tools/call in every mode, at `connections` and then on one connection (latency)."""
    bare = servers.bare_mcp
    modes = [("no auth", f"{bare.url}/mcp", [bare.proc.pid], [None])]
    for mode, label in [("cached", "cached introspection"),
                        ("uncached", "uncached introspection"), ("jwt", "JWT")]:  # fmt: skip
        if mode in servers.rs:
            token_issuer = servers.jwt_provider if mode == "jwt" else servers.provider
            url = servers.urls[mode]
            # One token per connection, so that no two in-flight calls share an introspection.
            tokens = stack.our_client_credentials(token_issuer.url, url, connections)
            pids = [servers.rs[mode].proc.pid, token_issuer.proc.pid]
            modes.append((label, url, pids, tokens))
    scenarios = []
    for single in (False, True):
        for label, url, pids, tokens in modes:
            spec = cycle(TOOL_OK, [tool_call(url, token) for token in tokens])
            if single:
                spec["connections"] = 1
            suffix = ("_1conn", ", 1 connection") if single else ("", "")
            scenarios.append(
                Scenario(f"tools_{label}{suffix[0]}", f"RS tools/call: {label}{suffix[1]}", url,
                         pids, spec)
            )  # fmt: skip
    return scenarios


def cycle(expect_body: str, requests: list[dict]) -> dict:
    return {"mode": "cycle", "expect_body": expect_body, "requests": requests}


def refresh_scenario(servers: Servers, connections: int) -> Scenario:
    """Rotating refresh: every connection follows its own chain (each answer's refresh token
    is the next request's), started from one login's worth of tokens per connection."""
    issuer = servers.provider.url
    seeds = asyncio.run(stack.user_tokens(issuer, servers.urls["cached"], connections))
    request = form_post(
        f"{issuer}/token", {"grant_type": "refresh_token", "client_id": stack.PUBLIC_CLIENT_ID}
    )
    request["body"] += "&refresh_token={token}"
    spec = {
        "mode": "chain",
        "expect_body": '"refresh_token"',
        "request": request,
        "tokens": [seed["refresh_token"] for seed in seeds],
        "next_token": '"refresh_token": ?"([^"]+)"',
    }
    return Scenario(
        "refresh", "provider: refresh (rotating)", issuer, [servers.provider.proc.pid], spec
    )


def login_scenario(servers: Servers, duration: float) -> Scenario:
    """A new browser each time: GET the login page, POST username and password (argon2)."""
    _, params = stack.authorize_params(servers.urls["cached"])
    spec = {
        "mode": "login",
        "connections": 4,
        "warmup": 0.0,
        "duration": duration,
        "expect_status": [303],
        "path": f"/authorize?{urlencode(params)}",
        "username": stack.USER,
        "password": stack.PASSWORD,
    }
    return Scenario(
        "login",
        "provider: password logins (login form)",
        servers.provider.url,
        [servers.provider.proc.pid],
        spec,
    )


def rs_metrics(mcp_url: str) -> dict:
    return httpx.get(mcp_url.removesuffix("/mcp") + "/metrics", timeout=10).json()["token_verifier"]


def concurrent_first_calls(bench: Bench, servers: Servers) -> None:
    """50 connections send their first call with one new token at once: how many
    introspections reach the provider (the cache should coalesce them into one)."""
    url = servers.urls["cached"]
    token = asyncio.run(stack.user_tokens(servers.provider.url, url, 1))[0]["access_token"]
    before = rs_metrics(url)["introspections"]
    spec = {
        "mode": "cycle",
        "connections": 50,
        "warmup": 0.0,
        "duration": 30.0,
        "max_requests": 50,
        "expect_body": TOOL_OK,
        "requests": [tool_call(url, token)],
    }
    pids = [servers.rs["cached"].proc.pid, servers.provider.proc.pid]
    result = bench.once(
        Scenario("first_calls_50", "RS: 50 concurrent first calls, new token", url, pids, spec)
    )
    result["introspections"] = rs_metrics(url)["introspections"] - before


def revocation_delay(bench: Bench, servers: Servers, ttl: float) -> None:
    """Call once with a new token (now cached), revoke it at the provider, then call every
    50 ms until the resource server refuses it: with the provider's revocation events, well
    under a second (bench/revocation_latency.py measures it over many revocations); without
    them (MCP_REVOCATION_EVENTS=off, or another provider) about the cache TTL."""
    url, issuer = servers.urls["cached"], servers.provider.url
    token = asyncio.run(stack.user_tokens(issuer, url, 1))[0]["access_token"]
    request = tool_call(url, token)
    poll_every, refused_after = 0.05, None
    with httpx.Client(timeout=10) as http:

        def status() -> int:
            return http.post(url, content=request["body"], headers=request["headers"]).status_code

        first = status()
        http.post(f"{issuer}/revoke", data={"token": token, "client_id": stack.PUBLIC_CLIENT_ID})
        revoked = time.monotonic()
        for _ in range(int((ttl + 10) / poll_every)):
            if status() == 401:
                refused_after = round(time.monotonic() - revoked, 2)
                break
            time.sleep(poll_every)
    bench.results["revocation"] = {
        "label": "RS: refusal after revocation",
        "cache_ttl": ttl,
        "first_status": first,
        "refused_after_s": refused_after,  # None: still accepted ttl + 10 s after revocation
    }
    console.print(f"  {'RS: refused after revocation':<46} {refused_after} s (cache TTL {ttl} s)")


# -- targets and the report ---------------------------------------------------------------------


def ratio(results: dict, a: str, b: str) -> float | None:
    """Median over the rounds of a's rate / b's rate (interleaved: same background for both)."""
    ra, rb = results.get(a, {}).get("rounds_rps"), results.get(b, {}).get("rounds_rps")
    if not ra or not rb or not all(rb):
        return None
    return round(statistics.median(x / y for x, y in zip(ra, rb, strict=True)), 3)


RATIOS = {
    "introspection / oidc-provider": ("introspection", "peer_introspection"),
    "client_credentials / oidc-provider": ("client_credentials", "peer_client_credentials"),
    "introspection / bare Starlette": ("introspection", "bare_starlette"),
    "client_credentials / bare Starlette": ("client_credentials", "bare_starlette"),
    "oidc-provider introspection / bare Starlette": ("peer_introspection", "bare_starlette"),
    "tools/call cached / no auth": ("tools_cached introspection", "tools_no auth"),
    "tools/call uncached / no auth": ("tools_uncached introspection", "tools_no auth"),
    "tools/call JWT / no auth": ("tools_JWT", "tools_no auth"),
}


def targets(results: dict) -> list[dict]:
    def target(name: str, value, goal: str, met) -> dict:
        return {
            "target": name,
            "measured": value,
            "goal": goal,
            "met": None if value is None else bool(met(value)),
        }

    def p50(name: str) -> float | None:
        return results.get(name, {}).get("p50_ms")

    cc = results.get("client_credentials", {})
    stored = f"{cc['tokens_stored']}/{cc['tokens_issued']}" if "tokens_stored" in cc else None
    cached, uncached = (
        p50("tools_cached introspection_1conn"),
        p50("tools_uncached introspection_1conn"),
    )
    miss = round(uncached - cached, 2) if cached and uncached else None
    first = results.get("first_calls_50", {})
    revocation = results.get("revocation", {})
    ttl = revocation.get("cache_ttl")
    refused = revocation.get("refused_after_s")
    refused = None if not revocation else "never" if refused is None else refused
    return [
        target(
            "introspection vs oidc-provider",
            ratio(results, "introspection", "peer_introspection"),
            "≥ 1.2×",
            lambda v: v >= 1.2,
        ),
        target(
            "client_credentials vs oidc-provider",
            ratio(results, "client_credentials", "peer_client_credentials"),
            "≥ 0.5×",
            lambda v: v >= 0.5,
        ),
        target(
            "client_credentials tokens durable in SQLite",
            stored,
            "all issued stored",
            lambda v: cc["tokens_stored"] == cc["tokens_issued"],
        ),
        target(
            "refresh (rotating), req/s",
            results.get("refresh", {}).get("rps"),
            "≥ 500",
            lambda v: v >= 500,
        ),
        target(
            "cached tools/call vs no auth",
            ratio(results, "tools_cached introspection", "tools_no auth"),
            "≥ 0.95×",
            lambda v: v >= 0.95,
        ),
        target("cache miss cost at p50 (1 connection), ms", miss, "≤ 3 ms", lambda v: v <= 3),
        target(
            "introspections for 50 concurrent first calls",
            first.get("introspections"),
            "exactly 1",
            lambda v: v == 1 and first.get("errors") == 0,
        ),
        target(
            "revoked token refused after, s",
            refused,
            f"≤ 1 s (revocation events; cache TTL {ttl} s without)",
            lambda v: v != "never" and v <= 1.0,
        ),
    ]


def machine(users_file: Path) -> dict:
    def importable(module: str) -> bool:  # what uvicorn's "auto" choices will find
        return importlib.util.find_spec(module) is not None

    alice = yaml.safe_load(users_file.read_text())["users"][stack.USER]["password_hash"]
    argon = extract_parameters(alice)
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "load_average_at_start": None,
        "python": platform.python_version(),
        "node": node.stdout.strip(),
        "sqlite": sqlite3.sqlite_version,
        "uvicorn_http": "httptools" if importable("httptools") else "h11",
        "event_loop": "uvloop" if importable("uvloop") else "asyncio",
        "argon2": f"argon2id m={argon.memory_cost} KiB, t={argon.time_cost}, p={argon.parallelism}",
    }


def fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def report(run: dict) -> None:
    title = (
        f"mcp-oauth benchmarks ({run['mode']}: {run['rounds']} round(s) × "
        f"{run['duration_s']} s, {run['machine']['cpus']} cores shared with the load "
        "generator)"
    )
    table = Table(title=title)
    columns = (
        "scenario",
        "conns",
        "req/s",
        "rounds min–max",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU",
        "CPU ms/req",
        "loadgen CPU",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for r in run["results"].values():
        if "rps" not in r:
            continue
        spread = r.get("rounds_rps", [r["rps"]])
        table.add_row(
            r["label"],
            str(r["connections"]),
            fmt(r["rps"]),
            f"{fmt(min(spread), 0)}–{fmt(max(spread), 0)}",
            fmt(r["p50_ms"], 2),
            fmt(r["p99_ms"], 2),
            str(r["errors"]),
            f"{r['server_cpu']:.0%}",
            fmt(r["server_cpu_ms"], 2),
            f"{r['loadgen_cpu']:.0%}",
        )
    console.print(table)
    ratios = Table(title="ratios (median of per-round ratios)")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    for name, value in run["ratios"].items():
        ratios.add_row(name, fmt(value, 2))
    console.print(ratios)
    goals = Table(title="targets")
    for column in ("target", "measured", "goal", "result"):
        goals.add_column(column)
    verdict = {True: "[green]met[/]", False: "[red]not met[/]", None: "[yellow]skipped[/]"}
    for t in run["targets"]:
        goals.add_row(t["target"], str(t["measured"]), t["goal"], verdict[t["met"]])
    console.print(goals)
    for note in run["notes"]:
        console.print(f"note: {note}")
    console.print(f"machine: {run['machine']}")


def markdown(run: dict) -> str:
    """The same report as Markdown tables, to paste into the README."""
    m = run["machine"]
    lines = [
        f"{run['mode']} run, {run['rounds']} interleaved round(s) × {run['duration_s']} s, "
        f"{run['connections']} connections; {m['cpus']} cores shared by servers and load "
        f"generator (load average {m['load_average_at_start']} at start); Python {m['python']}, "
        f"uvicorn on {m['uvicorn_http']} + {m['event_loop']}, node {m['node']}, "
        f"SQLite {m['sqlite']}, {m['argon2']}.",
        "",
        "| scenario | conns | req/s | p50 ms | p99 ms | server CPU ms/req |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for r in run["results"].values():
        if "rps" in r:
            lines.append(
                f"| {r['label']} | {r['connections']} | {fmt(r['rps'])} | {fmt(r['p50_ms'], 2)} "
                f"| {fmt(r['p99_ms'], 2)} | {fmt(r['server_cpu_ms'], 2)} |"
            )
    lines += ["", "| ratio | value |", "|---|--:|"]
    lines += [f"| {name} | {fmt(value, 2)} |" for name, value in run["ratios"].items()]
    lines += ["", "| target | measured | goal | result |", "|---|--:|---|---|"]
    verdict = {True: "met", False: "**not met**", None: "skipped"}
    for t in run["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | {verdict[t['met']]} |")
    return "\n".join(lines + [""] + [f"Note: {note}" for note in run["notes"]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--connections", type=int, default=16, help="default 16")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (full 4, quick 1)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    # warm-up and measured seconds per run, rounds, cache TTL of the cached RS
    warmup, duration, rounds, ttl = (0.3, 0.8, 1, 2.0) if args.quick else (1.0, 4.0, 4, 5.0)
    bench = Bench(args.connections, warmup, duration, args.rounds or rounds)
    started, load_average = time.monotonic(), os.getloadavg()[0]
    info = machine(ROOT / "users.yaml") | {"load_average_at_start": round(load_average, 2)}
    if load_average > 0.5:
        bench.notes.append(
            f"the 1-minute load average was {load_average:.2f} at start: "
            "other work shared the cores, figures are noisier"
        )
    with tempfile.TemporaryDirectory(prefix="mcp-oauth-bench-") as tmp, ExitStack() as exits:
        phase(f"starting servers in {tmp}")
        servers = start_servers(exits, Path(tmp), ttl, bench.notes)
        phase("preparing tokens")
        compared = compared_scenarios(servers, args.connections, 16 if args.quick else 64)
        for scenario in compared:
            prime(scenario)
        database = servers.provider.database
        stored_before = stack.count_tokens(database, stack.RS_CLIENT_ID)
        bench.interleaved(compared)
        cc = bench.results["client_credentials"]
        cc["tokens_issued"] = cc["ok_total"]
        cc["tokens_stored"] = stack.count_tokens(database, stack.RS_CLIENT_ID) - stored_before
        phase("single runs")
        bench.once(refresh_scenario(servers, args.connections))
        bench.once(login_scenario(servers, max(3.0, duration * 2)))
        concurrent_first_calls(bench, servers)
        revocation_delay(bench, servers, ttl)
    for result in bench.results.values():
        if result.get("errors") or result.get("worker_failures"):
            bench.notes.append(
                f"{result['label']}: {result['errors']} errors {result['worker_failures']}, "
                f"first: {result['first_error'][:200]!r}; its figures are not valid"
            )
    run = {
        "mode": "quick" if args.quick else "full",
        "rounds": bench.rounds,
        "warmup_s": warmup,
        "duration_s": duration,
        "connections": args.connections,
        "wall_s": round(time.monotonic() - started, 1),
        "machine": info,
        "ratios": {name: ratio(bench.results, *pair) for name, pair in RATIOS.items()},
        "targets": targets(bench.results),
        "notes": bench.notes,
        "results": bench.results,
    }
    report(run)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n")
    args.json.with_suffix(".md").write_text(markdown(run))
    console.print(f"written to {args.json} (and .md) in {run['wall_s']} s")
    # A smoke test fails on wrong answers, never on speed.
    wrong = [r for r in bench.results.values() if r.get("errors") or r.get("worker_failures")]
    revocation = bench.results.get("revocation", {})
    still_accepted = revocation.get("first_status") != 200 or revocation["refused_after_s"] is None
    return 1 if wrong or still_accepted else 0


if __name__ == "__main__":
    sys.exit(main())
