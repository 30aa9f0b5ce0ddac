"""Measuring: the requests the load generator sends, one run of it with the servers' CPU over
the run, and interleaved rounds (every scenario once per round, each figure the median)."""

from __future__ import annotations

import base64
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
from rich.console import Console

from bench import stack

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "bench" / "loadgen.py"
TOOL = "get_user_profile"
# What every good answer contains: an active token, an issued token, a tool result.
ACTIVE, ISSUED, TOOL_OK = '"active":true', '"access_token"', '"isError":false'

console = Console(width=None if sys.stdout.isatty() else 150)
STARTED = time.monotonic()


def phase(text: str) -> None:
    console.print(f"[bold]{text}[/] [dim](at {time.monotonic() - STARTED:.0f} s)[/]")


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


def cycle(expect_body: str, requests: list[dict]) -> dict:
    return {"mode": "cycle", "expect_body": expect_body, "requests": requests}


# -- one run, and rounds of runs ------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    label: str
    url: str
    pids: list[int]  # whose CPU is counted (with their child processes)
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
            f"  {result['label']:<52} {result['rps']:>9.1f} req/s "
            f"{result['server_cpu_ms']:>7.2f} CPU ms/req" + (problem if trouble else "")
        )
        return result


def prime(s: Scenario) -> None:
    """Every distinct request once before any measuring: a fresh server's first calls, and
    a token's first call (its introspection), pay one-time costs. Also a smoke check.
    (Chains are not primed: each token in them is single use.)"""
    if s.spec["mode"] != "cycle":
        return
    spec = s.current_spec()
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(s.url))
    with httpx.Client(base_url=origin, timeout=30) as http:
        for request in spec["requests"][:64]:
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
    combined["rounds_p50_ms"] = [r["p50_ms"] for r in rounds]
    return combined
