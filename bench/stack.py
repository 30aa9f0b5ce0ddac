"""The servers a benchmark run starts, each a subprocess on a free loopback port, and the
tokens it prepares before the load starts (through the real endpoints, never the database)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
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


def provider(tmp: Path, resources: list[str], token_format: str = "opaque") -> ServerProcess:
    """Our authorization server on SQLite in `tmp`; `.url` and `.database` set for the caller."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database = tmp / f"oauth-{token_format}.db"
    process = ServerProcess(
        ["oauth_provider.py", "--host", "127.0.0.1", "--port", str(port), "--issuer", url]
        + ["--database-url", f"sqlite:///{database}", "--log-level", "warning"]
        + ["--access-token-format", token_format],
        {"MCP_RS_CLIENT_SECRET": RS_SECRET, "OAUTH_RESOURCES": ",".join(resources)},
        f"{url}/.well-known/oauth-authorization-server",
        tmp / f"provider-{token_format}-{port}.log",
    )
    process.url, process.database = url, database  # type: ignore[attr-defined]
    return process


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


def bench_script(tmp: Path, script: str, ready_path: str) -> ServerProcess:
    # Any HTTP answer at ready_path means ready (a 404 too); not /mcp: a GET there streams.
    """One of the bare baselines in bench/ (bare_starlette.py, bare_mcp.py); `.url` set."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ServerProcess(
        [str(ROOT / "bench" / script), "--port", str(port)],
        {},
        url + ready_path,
        tmp / f"{script}-{port}.log",
    )
    process.url = url  # type: ignore[attr-defined]
    return process


def start_peer(tmp: Path, resource: str) -> OidcProviderPeer:
    """node oidc-provider (in memory) accepting `resource`; stop it with `.stop()`."""
    return start_oidc_provider("opaque", resource, RS_SECRET, log_dir=tmp)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by these processes (all their threads)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def count_tokens(database: Path, client_id: str) -> int:
    """Access tokens durably stored for `client_id`, read from the committed SQLite file."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        query = "SELECT count(*) FROM tokens WHERE client_id = ? AND kind = 'access'"
        return db.execute(query, (client_id,)).fetchone()[0]


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
