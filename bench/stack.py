"""The servers a benchmark run starts, each a subprocess on a free loopback port, and the
tokens it prepares before the load starts (through the real endpoints, never the database)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from mcp_oauth.client.headless import authorize_with_password, pkce_pair
from tests.peer_fixtures import BENCH_CLIENT_ID, OidcProviderPeer, start_oidc_provider
from tests.support import ROOT, ServerProcess, free_port

RS_CLIENT_ID = "mcp-resource-server"
RS_SECRET = "bench-rs-secret-0123456789abcdef0123456789"
PUBLIC_CLIENT_ID = "mcp-client"
REDIRECT_URI = "http://127.0.0.1:8976/callback"
USER, PASSWORD = "alice", "password123"


@contextlib.contextmanager
def running(process: ServerProcess) -> Iterator[ServerProcess]:
    process.start()
    try:
        yield process
    finally:
        process.stop()


def provider(
    tmp: Path,
    resources: list[str],
    token_format: str = "opaque",
    database_url: str | None = None,
    workers: int = 1,
    name: str = "",
    extra_args: tuple[str, ...] = (),
) -> ServerProcess:
    """Our authorization server (SQLite in `tmp` unless `database_url`), `workers` processes;
    `.url` and `.database_url` set for the caller."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    name = name or token_format
    database_url = database_url or f"sqlite:///{tmp / f'oauth-{name}.db'}"
    process = ServerProcess(
        ["oauth_provider.py", "--host", "127.0.0.1", "--port", str(port), "--issuer", url]
        + ["--database-url", database_url, "--log-level", "warning"]
        + ["--access-token-format", token_format, "--workers", str(workers), *extra_args],
        {"MCP_RS_CLIENT_SECRET": RS_SECRET, "OAUTH_RESOURCES": ",".join(resources)},
        f"{url}/.well-known/oauth-authorization-server",
        tmp / f"provider-{name}-{port}.log",
    )
    process.url, process.database_url = url, database_url  # type: ignore[attr-defined]
    process.workers = workers  # type: ignore[attr-defined]
    return process


def users_file_at(tmp: Path, parameters) -> Path:
    """users.yaml with alice's password hashed at `parameters` (an Argon2Parameters): to sign
    in at those parameters (a stored hash is verified with its own)."""
    import yaml

    users = yaml.safe_load((ROOT / "users.yaml").read_text())
    users["users"][USER]["password_hash"] = parameters.hasher().hash(PASSWORD)
    path = tmp / f"users-m{parameters.memory_kib}.yaml"
    path.write_text(yaml.safe_dump(users, sort_keys=False))
    return path


POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A new, empty PostgreSQL database for this run (its SQLAlchemy URL), dropped at the
    end; None when PostgreSQL at 127.0.0.1:5432 is not reachable."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError:
        yield None
        return
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def resource_server(tmp: Path, mcp_url: str, issuer: str, env: dict[str, str]) -> ServerProcess:
    """mcp_resource_server.py serving `mcp_url`, trusting `issuer`; `env` adds its settings."""
    port = str(urlsplit(mcp_url).port)
    return ServerProcess(
        ["mcp_resource_server.py", "--host", "127.0.0.1", "--port", port],
        {
            "OAUTH_PROVIDER_URL": issuer,
            "MCP_SERVER_URL": mcp_url,
            "MCP_RS_CLIENT_ID": RS_CLIENT_ID,
            "MCP_RS_CLIENT_SECRET": RS_SECRET,
            "MCP_DATABASE_URL": f"sqlite:///{tmp}/rs-{port}.db",
            **env,
        },
        mcp_url.removesuffix("/mcp") + "/metrics",
        tmp / f"rs-{port}.log",
    )


def bench_script(tmp: Path, script: str, ready_path: str, *args: str) -> ServerProcess:
    # Any HTTP answer at ready_path means ready (a 404 too); not /mcp: a GET there streams.
    """One of the bare baselines in bench/ (bare_starlette.py, bare_mcp.py,
    bare_durable_token.py), with `args`; `.url` set."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ServerProcess(
        [str(ROOT / "bench" / script), "--port", str(port), *args],
        {},
        url + ready_path,
        tmp / f"{script}-{port}.log",
    )
    process.url = url  # type: ignore[attr-defined]
    return process


def start_peer(tmp: Path, resource: str) -> OidcProviderPeer:
    """node oidc-provider (in memory) accepting `resource`; stop it with `.stop()`."""
    return start_oidc_provider("opaque", resource, RS_SECRET, log_dir=tmp)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn's workers are children of its supervisor)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def worker_count(pid: int) -> int:
    """How many uvicorn worker processes (multiprocessing spawns) run below `pid`."""
    return sum(
        b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
        for child in descendants(pid)[1:]
        if Path(f"/proc/{child}/cmdline").exists()
    )


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by these processes and their children (all
    threads; /proc/<pid>/stat utime + stime)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in {p for top in pids for p in descendants(top)}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def count_tokens(database_url: str, client_id: str) -> int:
    """Access tokens durably stored for `client_id`, read from the committed database (the
    SQLite file opened read-only, or PostgreSQL)."""
    query = "SELECT count(*) FROM tokens WHERE client_id = %s AND kind = 'access'"
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute(query.replace("%s", "?"), (client_id,)).fetchone()[0]
    import psycopg

    libpq = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq) as conn:
        return conn.execute(query, (client_id,)).fetchone()[0]


# -- tokens, obtained the way clients obtain them ------------------------------------------------


def client_credentials(token_endpoint: str, client: tuple[str, str], resource: str) -> str:
    form = {"grant_type": "client_credentials", "scope": "read write", "resource": resource}
    response = httpx.post(token_endpoint, data=form, auth=client, timeout=10)
    response.raise_for_status()
    return response.json()["access_token"]


def our_client_credentials(issuer: str, resource: str, count: int) -> list[str]:
    return [
        client_credentials(f"{issuer}/token", (RS_CLIENT_ID, RS_SECRET), resource)
        for _ in range(count)
    ]


def peer_client_credentials(peer: OidcProviderPeer, count: int) -> list[str]:
    client = (BENCH_CLIENT_ID, peer.client_secret)
    return [client_credentials(peer.token_endpoint, client, peer.resource) for _ in range(count)]


def authorize_params(resource: str, scope: str = "read write") -> tuple[str, dict[str, str]]:
    """(code_verifier, query of an authorization request) for the public client."""
    verifier, challenge = pkce_pair()
    return verifier, {
        "response_type": "code",
        "client_id": PUBLIC_CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": scope,
        "state": "bench",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": resource,
    }


async def user_tokens(issuer: str, resource: str, count: int) -> list[dict]:
    """`count` token responses for alice through the login and consent pages. One browser
    session: the first round signs in (one argon2 check), the others only consent."""
    responses = []
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(count):
            verifier, params = authorize_params(resource)
            url = f"{issuer}/authorize?{urlencode(params)}"
            callback = await authorize_with_password(http, url, USER, PASSWORD)
            code = parse_qs(urlsplit(callback).query)["code"][0]
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "client_id": PUBLIC_CLIENT_ID,
                "code_verifier": verifier,
                "resource": resource,
            }
            response = await http.post(f"{issuer}/token", data=form)
            response.raise_for_status()
            responses.append(response.json())
    return responses
