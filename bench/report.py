"""The report: ratios against the baselines of the same run, the targets of issue 14 (met /
not met, per database), and the tables, on the console and as Markdown for the README."""

from __future__ import annotations

import importlib.util
import os
import platform
import sqlite3
import statistics
import subprocess
from pathlib import Path

import yaml
from argon2 import extract_parameters
from rich.table import Table

from bench import stack
from bench.measure import console
from bench.servers import DATABASES, WORKERS

NO_AUTH = "tools_no auth"


def ratio(results: dict, a: str, b: str) -> float | None:
    """Median over the rounds of a's rate / b's rate (interleaved: same background for both)."""
    ra, rb = results.get(a, {}).get("rounds_rps"), results.get(b, {}).get("rounds_rps")
    if not ra or not rb or not all(rb):
        return None
    return round(statistics.median(x / y for x, y in zip(ra, rb, strict=True)), 3)


def ratios(results: dict) -> dict[str, float | None]:
    found = {
        "oidc-provider introspection / bare Starlette": ("peer_introspection", "bare_starlette"),
        "minimal durable token / oidc-provider client_credentials": (
            "bare_durable_token",
            "peer_client_credentials",
        ),
        "client_credentials (SQLite) / minimal durable token": (
            "client_credentials:sqlite",
            "bare_durable_token",
        ),
        "tools/call cached / no auth": ("tools_cached introspection", NO_AUTH),
        "tools/call uncached / no auth": ("tools_uncached introspection", NO_AUTH),
        "tools/call JWT / no auth": ("tools_JWT", NO_AUTH),
    }
    for db, name in DATABASES.items():
        found |= {
            f"introspection ({name}) / oidc-provider": (
                f"introspection:{db}",
                "peer_introspection",
            ),
            f"introspection ({name}) / bare Starlette": (f"introspection:{db}", "bare_starlette"),
            f"introspection ({name}), {WORKERS} workers / 1": (
                f"introspection:{db}_w{WORKERS}",
                f"introspection:{db}",
            ),
            f"client_credentials ({name}) / oidc-provider": (
                f"client_credentials:{db}",
                "peer_client_credentials",
            ),
        }
    return {name: ratio(results, *pair) for name, pair in found.items()}


def cpu_pair(results: dict, ours: str, baseline: str | None = None) -> str:
    """Server CPU ms per request: ours / baseline."""
    values = [results.get(name, {}).get("server_cpu_ms") for name in (ours, baseline) if name]
    return " / ".join("–" if v is None else f"{v:.2f}" for v in values)


def shown(value) -> str:
    """A measured value as the report prints it: ratios with ×, rates whole, ms to 0.01."""
    if value is None:
        return "–"
    if isinstance(value, float) and value < 10:
        return f"{value:.2f}"
    return f"{value:,.0f}" if isinstance(value, float) else str(value)


def target(name, database, value, goal, met, cpu="", unit="") -> dict:
    return {
        "target": name,
        "database": database,
        "measured": value,
        "shown": shown(value) + (unit if value is not None else ""),
        "goal": goal,
        "met": None if value is None or met is None else bool(met(value)),
        "cpu_ms": cpu,
    }


def durable(results: dict, db: str) -> tuple[str | None, bool]:
    cc = results.get(f"client_credentials:{db}", {})
    if "tokens_stored" not in cc:
        return None, False
    return f"{cc['tokens_stored']:,}/{cc['tokens_issued']:,}", cc["tokens_stored"] == cc[
        "tokens_issued"
    ]


def cache_miss_ms(results: dict, uncached_mode: str) -> float | None:
    """What a cache miss adds at p50, one connection: uncached p50 − cached p50."""
    cached = results.get("tools_cached introspection_1conn", {}).get("p50_ms")
    uncached = results.get(f"tools_{uncached_mode}_1conn", {}).get("p50_ms")
    return round(uncached - cached, 2) if cached and uncached else None


INTROSPECTION_GOAL = {"sqlite": 1.2, "postgresql": 1.0}
MISS_MODE = {  # the uncached RS whose provider runs on each database
    "sqlite": "uncached introspection",
    "postgresql": "uncached introspection, PostgreSQL provider",
}


def database_targets(results: dict, db: str, name: str) -> list[dict]:
    """The provider's targets on one database, and what a cache miss costs the RS there."""
    goal = INTROSPECTION_GOAL[db]
    introspection = ratio(results, f"introspection:{db}", "peer_introspection")
    cc = ratio(results, f"client_credentials:{db}", "peer_client_credentials")
    stored, all_stored = durable(results, db)
    refresh = results.get(f"refresh:{db}", {}).get("rps")
    refresh_goal, refresh_met = (
        ("≥ 1,000/s", lambda v: v >= 1000) if db == "sqlite" else ("reported", None)
    )
    miss = MISS_MODE[db]
    return [
        target(
            "introspection vs oidc-provider (in memory)", name, introspection,
            f"≥ {goal}×", lambda v: v >= goal,
            cpu_pair(results, f"introspection:{db}", "peer_introspection"), "×",
        ),
        target(
            "client_credentials vs oidc-provider, every token committed", name,
            None if cc is None else f"{cc:.2f}× ({stored} stored)",
            "≥ 1.0×, all stored", lambda _: cc >= 1.0 and all_stored,
            cpu_pair(results, f"client_credentials:{db}", "peer_client_credentials"),
        ),
        target(
            "rotating refresh, durable", name, refresh, refresh_goal, refresh_met,
            cpu_pair(results, f"refresh:{db}"), "/s",
        ),
        target(
            "RS: a cache miss adds at p50 (1 connection)", name,
            cache_miss_ms(results, miss), "≤ 2 ms", lambda v: v <= 2,
            cpu_pair(results, f"tools_{miss}_1conn", "tools_cached introspection_1conn"), " ms",
        ),
    ]  # fmt: skip


def targets(results: dict) -> list[dict]:
    """Issue 14's targets, each against its baseline from the same run, per database."""
    per_database = [database_targets(results, db, name) for db, name in DATABASES.items()]
    rows = [row for same_target in zip(*per_database, strict=True) for row in same_target]
    rows.append(
        target(
            "RS: cached tools/call vs unauthenticated FastMCP (stateless)", "SQLite",
            ratio(results, "tools_cached introspection", NO_AUTH), "≥ 0.97×",
            lambda v: v >= 0.97, cpu_pair(results, "tools_cached introspection", NO_AUTH), "×",
        )
    )  # fmt: skip
    first = results.get("first_calls_50", {})
    rows.append(
        target(
            "RS: introspections for 50 concurrent first calls", "SQLite",
            first.get("introspections"), "exactly 1",
            lambda v: v == 1 and first.get("errors") == 0,
        )
    )  # fmt: skip
    revocation = results.get("revocation", {})
    refused = revocation.get("refused_after_s")
    refused = None if not revocation else "never" if refused is None else refused
    rows.append(
        target(
            "RS: a revoked token refused after", "SQLite", refused,
            f"≤ 1 s (events; cache TTL {revocation.get('cache_ttl')} s without)",
            lambda v: v != "never" and v <= 1.0, unit=" s" if refused != "never" else "",
        )
    )  # fmt: skip
    return rows


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


def verdict(t: dict) -> str:
    if t["met"] is not None:
        return "met" if t["met"] else "not met"
    return "skipped" if t["measured"] is None else "reported"


COLUMNS = ("scenario", "conns", "req/s", "rounds min–max", "p50 ms", "p99 ms", "errors",
           "server CPU", "CPU ms/req", "loadgen CPU")  # fmt: skip


def scenario_rows(run: dict) -> list[list[str]]:
    rows = []
    for r in run["results"].values():
        if "rps" in r:
            spread = r.get("rounds_rps", [r["rps"]])
            rows.append([r["label"], str(r["connections"]), fmt(r["rps"]),
                         f"{fmt(min(spread), 0)}–{fmt(max(spread), 0)}", fmt(r["p50_ms"], 2),
                         fmt(r["p99_ms"], 2), str(r["errors"]), f"{r['server_cpu']:.0%}",
                         fmt(r["server_cpu_ms"], 2), f"{r['loadgen_cpu']:.0%}"])  # fmt: skip
    return rows


def report(run: dict) -> None:
    title = (
        f"mcp-oauth benchmarks ({run['mode']}: {run['rounds']} round(s) × "
        f"{run['duration_s']} s, {run['machine']['cpus']} cores shared with the load "
        "generator)"
    )
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for row in scenario_rows(run):
        table.add_row(*row)
    console.print(table)
    ratio_table = Table(title="ratios (median of per-round ratios)")
    ratio_table.add_column("ratio")
    ratio_table.add_column("value", justify="right")
    for name, value in run["ratios"].items():
        ratio_table.add_row(name, fmt(value, 2))
    console.print(ratio_table)
    goals = Table(title="targets (issue 14), each against its baseline in this run")
    for column in ("target", "database", "measured", "goal", "CPU ms/req ours / baseline",
                   "result"):  # fmt: skip
        goals.add_column(column)
    colour = {"met": "green", "not met": "red", "skipped": "yellow", "reported": "blue"}
    for t in run["targets"]:
        shown = verdict(t)
        goals.add_row(t["target"], t["database"], t["shown"], t["goal"], t["cpu_ms"],
                      f"[{colour[shown]}]{shown}[/]")  # fmt: skip
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
        f"SQLite {m['sqlite']}, PostgreSQL {m.get('postgresql') or 'not used'}, {m['argon2']}.",
        "",
        "| scenario | conns | req/s | p50 ms | p99 ms | server CPU ms/req |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for row in scenario_rows(run):
        lines.append(f"| {row[0]} | {row[1]} | {row[2]} | {row[4]} | {row[5]} | {row[8]} |")
    lines += ["", "| target | database | measured | goal | CPU ms/req ours / baseline | result |",
              "|---|---|--:|---|--:|---|"]  # fmt: skip
    for t in run["targets"]:
        shown = verdict(t)
        shown = f"**{shown}**" if shown == "not met" else shown
        lines.append(f"| {t['target']} | {t['database']} | {t['shown']} | {t['goal']} "
                     f"| {t['cpu_ms']} | {shown} |")  # fmt: skip
    lines += ["", "| ratio | value |", "|---|--:|"]
    lines += [f"| {name} | {fmt(value, 2)} |" for name, value in run["ratios"].items()]
    argon = run["results"].get("argon2")
    if argon:
        lines += ["", "| argon2id verification | parameters | wall ms | CPU ms |"]
        lines += ["|---|---|--:|--:|"]
        for name in ("defaults", "floor"):
            a = argon[name]
            lines.append(f"| {name} | {a['parameters']} | {a['wall_ms']} | {a['cpu_ms']} |")
    return "\n".join(lines + [""] + [f"Note: {note}" for note in run["notes"]]) + "\n"
