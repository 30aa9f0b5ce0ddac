#!/usr/bin/env python3
"""Benchmarks of the provider (on SQLite and PostgreSQL) and the resource server, against node
oidc-provider and bare Starlette / FastMCP baselines measured in the same run.

    python bench/run.py            # full run, about ten minutes
    python bench/run.py --quick    # smoke run, about two minutes (numbers only indicative)

Every server is a subprocess on a free loopback port; load comes from bench/loadgen.py in
another process, which shares the machine's cores with the servers. The scenarios that are
compared with each other run interleaved, in rounds (A B C, A B C, ...), and each figure is
the median over the rounds, so a neighbour's load hits both sides of a ratio alike. Prints
the table and issue 14's targets (met / not met, per database, with server CPU per request)
and writes everything to bench/results/latest.json (and the tables as Markdown to latest.md).
Nothing here asserts on time: it reports. Modules: measure.py (runs and rounds), servers.py,
scenarios.py, report.py; stack.py (processes and tokens), loadgen.py (the load).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import stack  # noqa: E402
from bench.measure import Bench, console, phase, prime  # noqa: E402
from bench.report import machine, markdown, ratios, report, targets  # noqa: E402
from bench.scenarios import (  # noqa: E402
    argon2_cost,
    compared_scenarios,
    concurrent_first_calls,
    login_scenario,
    revocation_delay,
)
from bench.servers import start_servers  # noqa: E402


def postgres_urls(exits: ExitStack, wanted: bool, notes: list[str]) -> list[str]:
    """Two fresh PostgreSQL databases (one process, WORKERS processes), or none."""
    if not wanted:
        notes.append("PostgreSQL skipped (--no-postgres)")
        return []
    urls = [exits.enter_context(stack.postgres_database()) for _ in range(2)]
    if None in urls:
        notes.append("PostgreSQL skipped: nothing answers at 127.0.0.1:5432")
        return []
    return urls


def record_durability(bench: Bench, databases: dict[str, str], stored_before: dict) -> None:
    """Every client_credentials token answered must be in the committed database."""
    for db, url in databases.items():
        cc = bench.results.get(f"client_credentials:{db}")
        if cc:
            cc["tokens_issued"] = cc["ok_total"]
            cc["tokens_stored"] = stack.count_tokens(url, stack.RS_CLIENT_ID) - stored_before[db]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, about two minutes")
    parser.add_argument("--connections", type=int, default=16, help="default 16")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (full 4, quick 1)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
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
        postgres = postgres_urls(exits, not args.no_postgres, bench.notes)
        info["postgresql"] = "127.0.0.1:5432" if postgres else None
        phase(f"starting servers in {tmp}")
        servers = start_servers(exits, Path(tmp), ttl, bench.notes, postgres)
        phase("preparing tokens")
        compared = compared_scenarios(servers, args.connections, 16 if args.quick else 64)
        for scenario in compared:
            prime(scenario)
        databases = {db: servers.providers[db].database_url for db in servers.databases}
        before = {db: stack.count_tokens(url, stack.RS_CLIENT_ID) for db, url in databases.items()}
        bench.interleaved(compared)
        record_durability(bench, databases, before)
        phase("single runs")
        bench.once(login_scenario(servers, max(3.0, duration * 2)))
        bench.once(login_scenario(servers, max(3.0, duration * 2), floor=True))
        concurrent_first_calls(bench, servers)
        revocation_delay(bench, servers, ttl)
    argon2_cost(bench, 3 if args.quick else 9)
    for result in bench.results.values():
        if result.get("errors") or result.get("worker_failures"):
            bench.notes.append(
                f"{result['label']}: {result['errors']} errors {result['worker_failures']}, "
                f"first: {result['first_error'][:200]!r}; its figures are not valid"
            )
    bench.notes.append(
        "oidc-provider's refresh is not measured: the peer's clients are client_credentials "
        "only (a code client would need its interaction pages driven); the refresh goal is "
        "absolute"
    )
    run = {
        "mode": "quick" if args.quick else "full",
        "rounds": bench.rounds,
        "warmup_s": warmup,
        "duration_s": duration,
        "connections": args.connections,
        "wall_s": round(time.monotonic() - started, 1),
        "machine": info,
        "ratios": ratios(bench.results),
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
