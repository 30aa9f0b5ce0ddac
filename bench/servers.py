"""The servers one benchmark run starts, all at once, each a subprocess on a free port:
node oidc-provider, the bare baselines, our provider on SQLite and on PostgreSQL (each also
with two workers), and the resource server in each validation mode."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import stack
from bench.measure import ROOT
from mcp_oauth.provider.passwords import FLOOR
from tests.support import ServerProcess, free_port

DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
WORKERS = 2  # the multi-worker provider of the report-only comparison


@dataclass
class Servers:
    peer: object
    bare_starlette: ServerProcess
    bare_mcp: ServerProcess
    # "sqlite", "postgresql", and "sqlite_w2" / "postgresql_w2" (--workers 2)
    providers: dict[str, ServerProcess]
    rs: dict[str, ServerProcess]  # "cached", "uncached", "uncached_postgresql", "jwt"
    rs_provider: dict[str, ServerProcess]  # the provider each RS mode trusts
    urls: dict[str, str]  # each RS mode's MCP URL
    floor_provider: ServerProcess  # SQLite, argon2id at the floor (alice's hash too)
    bare_durable_token: ServerProcess  # the floor of a durable client_credentials token

    @property
    def databases(self) -> list[str]:
        return [name for name in DATABASES if name in self.providers]


def jwt_mode_env() -> dict[str, str] | None:
    """The resource server's setting for local JWT validation, once it has one."""
    source = (ROOT / "mcp_resource_server.py").read_text()
    return {"MCP_TOKEN_VALIDATION": "jwt"} if "MCP_TOKEN_VALIDATION" in source else None


def stop_peer(started: Future) -> None:
    if started.exception() is None:
        started.result().stop()


def providers(tmp: Path, resources: list[str], postgres: list[str]) -> dict[str, ServerProcess]:
    """Our provider per database, once with one process and once with WORKERS; `postgres`
    holds the URLs of two fresh PostgreSQL databases, or is empty (then SQLite only)."""
    found = {
        "sqlite": stack.provider(tmp, resources, name="sqlite"),
        f"sqlite_w{WORKERS}": stack.provider(tmp, resources, workers=WORKERS, name="sqlite-w"),
    }
    if postgres:
        found["postgresql"] = stack.provider(tmp, resources, database_url=postgres[0], name="pg")
        found[f"postgresql_w{WORKERS}"] = stack.provider(
            tmp, resources, database_url=postgres[1], workers=WORKERS, name="pg-w"
        )
    return found


def start_servers(
    exits: ExitStack, tmp: Path, ttl: float, notes: list[str], postgres: list[str]
) -> Servers:
    """Everything up at once (started in parallel); all stopped when `exits` closes."""
    modes = ["cached", "uncached", "jwt"] + (["uncached_postgresql"] if postgres else [])
    urls = {mode: f"http://127.0.0.1:{free_port()}/mcp" for mode in modes}
    jwt_env = jwt_mode_env()
    if jwt_env is None:
        notes.append(
            "JWT mode skipped: mcp_resource_server.py has no MCP_TOKEN_VALIDATION setting "
            "(no JWT validation mode yet)"
        )
    ours = providers(tmp, [url for mode, url in urls.items() if mode != "jwt"], postgres)
    rs_provider = {"cached": ours["sqlite"], "uncached": ours["sqlite"]}
    if postgres:
        rs_provider["uncached_postgresql"] = ours["postgresql"]
    if jwt_env:
        rs_provider["jwt"] = stack.provider(tmp, [urls["jwt"]], "jwt")
    ttls = {"cached": str(ttl), "uncached": "0", "uncached_postgresql": "0"}
    resource_servers = {
        mode: stack.resource_server(
            tmp,
            urls[mode],
            issuer.url,
            jwt_env if mode == "jwt" else {"MCP_INTROSPECTION_CACHE_TTL": ttls[mode]},
        )
        for mode, issuer in rs_provider.items()
    }
    floor_provider = stack.provider(tmp, [urls["cached"]], name="floor", extra_args=floor_args(tmp))
    processes = {
        "provider_floor": floor_provider,
        "bare_starlette": stack.bench_script(tmp, "bare_starlette.py", "/"),
        "bare_mcp": stack.bench_script(tmp, "bare_mcp.py", "/ready"),
        "bare_durable_token": stack.bench_script(
            tmp,
            "bare_durable_token.py",
            "/",
            "--database",
            str(tmp / "bare-durable.db"),
            "--client-id",
            stack.RS_CLIENT_ID,
            "--secret",
            stack.RS_SECRET,
        ),
        **{f"provider_{name}": p for name, p in ours.items()},
        **({"jwt_provider": rs_provider["jwt"]} if jwt_env else {}),
        **{f"rs_{mode}": p for mode, p in resource_servers.items()},
    }
    for process in processes.values():
        exits.callback(process.stop)
    with ThreadPoolExecutor(len(processes) + 1) as pool:
        peer_future = pool.submit(stack.start_peer, tmp, urls["cached"])
        exits.callback(stop_peer, peer_future)  # also when another server fails to start
        for future in [pool.submit(p.start, 120.0) for p in processes.values()]:
            future.result()
        peer = peer_future.result()
    for name, process in ours.items():
        if process.workers > 1 and stack.worker_count(process.proc.pid) < process.workers:
            notes.append(
                f"provider {name}: --workers {process.workers} asked, but it serves from one "
                "process (oauth_provider.py does not hand --workers to provider/serving.py yet)"
            )
    return Servers(
        peer,
        processes["bare_starlette"],
        processes["bare_mcp"],
        ours,
        resource_servers,
        rs_provider,
        urls,
        floor_provider,
        processes["bare_durable_token"],
    )


def floor_args(tmp: Path) -> tuple[str, ...]:
    """The provider's flags for argon2id at the floor, with a users file hashed so."""
    return (
        "--users", str(stack.users_file_at(tmp, FLOOR)),
        "--argon2-memory-kib", str(FLOOR.memory_kib),
        "--argon2-time-cost", str(FLOOR.time_cost),
        "--argon2-parallelism", str(FLOOR.parallelism),
    )  # fmt: skip
