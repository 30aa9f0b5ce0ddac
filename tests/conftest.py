"""Fixtures that start the real provider (SQLite or PostgreSQL) on free ports."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.oauth_helpers import Browser
from tests.support import ServerProcess, free_port

RS_SECRET = "test-rs-secret-0123456789abcdef0123456789"
RS_AUTH = ("mcp-resource-server", RS_SECRET)  # the resource server's client credentials
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_available() -> bool:
    import psycopg

    for attempt in range(2):
        try:
            psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
            return True
        except psycopg.OperationalError:
            if attempt == 0:  # not running: start this machine's cluster, as CI would
                subprocess.run(
                    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
                    shell=True,
                    capture_output=True,
                )
    return False


@contextmanager
def new_postgres_database(prefix: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own (its SQLAlchemy URL), dropped afterwards."""
    import psycopg

    if not _postgres_available():
        pytest.fail("PostgreSQL at 127.0.0.1:5432 is not reachable and could not be started")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with new_postgres_database("oauth_test") as url:
        yield url


@dataclass
class Provider:
    url: str
    database_url: str
    process: ServerProcess
    resource: str

    def restart(self) -> None:
        self.process.stop()
        self.process.start()


def start_provider(
    tmp_path,
    database_url: str | None = None,
    env: dict | None = None,
    args: list | None = None,
    *,
    resource: str = "http://127.0.0.1:8000/mcp",
    host: str = "127.0.0.1",
) -> Provider:
    """oauth_provider.py on a free port, issuing tokens for `resource` (OAUTH_RESOURCES)."""
    port = free_port()
    url = f"http://{host}:{port}"
    database_url = database_url or f"sqlite:///{tmp_path}/oauth-{port}.db"
    process = ServerProcess(
        [
            "oauth_provider.py",
            "--port",
            str(port),
            "--host",
            host,
            "--issuer",
            url,
            "--database-url",
            database_url,
            *(args or []),
        ],
        {
            "MCP_RS_CLIENT_SECRET": RS_SECRET,
            "OAUTH_RESOURCES": resource,
            # Every test registers from 127.0.0.1: the per-address registration limit is tested
            # on its own (test_attacks_storage) and switched off for the shared providers.
            "OAUTH_REGISTRATIONS_PER_HOUR": "0",
            **(env or {}),
        },
        f"{url}/.well-known/oauth-authorization-server",
        tmp_path / f"provider-{port}.log",
    ).start()
    return Provider(url, database_url, process, resource)


def start_resource_server(tmp_path, port: int, env: dict[str, str]) -> ServerProcess:
    """mcp_resource_server.py at http://127.0.0.1:<port>/mcp with its own SQLite file; `env`
    names the provider and the credentials."""
    url = f"http://127.0.0.1:{port}/mcp"
    return ServerProcess(
        ["mcp_resource_server.py", "--host", "127.0.0.1", "--port", str(port)],
        {"MCP_SERVER_URL": url, "MCP_DATABASE_URL": f"sqlite:///{tmp_path}/rs-{port}.db", **env},
        f"http://127.0.0.1:{port}/metrics",
        tmp_path / f"rs-{port}.log",
    ).start()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def provider(request, tmp_path_factory) -> Iterator[Provider]:
    """The real provider, once on SQLite and once on PostgreSQL."""
    database_url = None
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgres_database")
    handle = start_provider(tmp_path_factory.mktemp("provider"), database_url)
    yield handle
    handle.process.stop()


@pytest.fixture(scope="module")
def alice(provider) -> Browser:
    return Browser(provider.url, "alice", "password123")


@pytest.fixture(scope="module")
def bob(provider) -> Browser:
    return Browser(provider.url, "bob", "secret456")
