"""External peers for interop tests and benchmarks: node oidc-provider and an Entra imitation
(Glewlwyd, a Debian package, lives in tests/peers/glewlwyd/), and our resource server as the
interop tests run it against each of them.

* oidc-provider (panva, from npm) is a real, independent authorization server: our stand-in for
  Keycloak. It runs as a node subprocess on a free port; only its machine-to-machine parts are
  configured (client_credentials with resource indicators, introspection, revocation, JWKS).
* Entra cannot run here; `peers.entra` imitates its token shapes with a local key set and serves
  discovery, JWKS and On-Behalf-Of over real HTTP from a thread.

In tests: `pytest_plugins = ["tests.peer_fixtures"]`, then the `oidc_provider_factory` and
`entra` fixtures. In a benchmark run from the repository root (`python -m bench.x`): call
`start_oidc_provider(...)` / `start_entra()` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client

from tests import conftest
from tests.peers.entra import EntraApp, EntraServer, EntraTokenFactory, EntraUser, OboError
from tests.peers.process import start_peer, stop_peer
from tests.support import ServerProcess, free_port, install_pinned_npm_package

__all__ = [
    "EntraApp",
    "EntraServer",
    "EntraTokenFactory",
    "EntraUser",
    "OboError",
    "OidcProviderPeer",
    "ResourceServer",
    "ensure_oidc_provider_installed",
    "entra",
    "oidc_provider_factory",
    "start_entra",
    "start_oidc_provider",
    "start_resource_server",
]

OIDC_PROVIDER_DIR = Path(__file__).resolve().parent / "peers" / "oidc_provider"
RS_CLIENT_ID = "mcp-resource-server"
TEST_CLIENT_ID = "test-client"
BENCH_CLIENT_ID = "bench-client"
TEST_CLIENT_SECRET = "test-client-secret"
TEST_RS_SECRET = "peer-test-rs-secret"


# -- oidc-provider ---------------------------------------------------------------------------------
def ensure_oidc_provider_installed() -> None:
    """The pinned oidc-provider installed from the committed lockfile (tests/support.py)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise RuntimeError(
            "the oidc-provider test peer needs Node.js >= 18 and npm on PATH "
            f"(node={node}, npm={npm}); install them, then run `npm ci` in {OIDC_PROVIDER_DIR}"
        )
    install_pinned_npm_package(OIDC_PROVIDER_DIR, "oidc-provider")


@dataclass
class OidcProviderPeer:
    """A running oidc-provider and what a test needs to talk to it.

    Clients: `mcp-resource-server` (secret `rs_client_secret`, may introspect any token) and
    `test-client` / `bench-client` (secret `client_secret`, client_credentials, scope
    "read write admin"), all authenticating with client_secret_basic.
    """

    issuer: str
    resource: str
    access_token_format: str
    rs_client_secret: str
    client_secret: str
    metadata: dict[str, Any]
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def token_endpoint(self) -> str:
        return self.metadata["token_endpoint"]

    @property
    def introspection_endpoint(self) -> str:
        return self.metadata["introspection_endpoint"]

    @property
    def revocation_endpoint(self) -> str:
        return self.metadata["revocation_endpoint"]

    @property
    def jwks_uri(self) -> str:
        return self.metadata["jwks_uri"]

    def token_request(
        self, client_id: str = TEST_CLIENT_ID, client_secret: str | None = None, **form: str
    ) -> httpx.Response:
        """A raw token request (for negative tests): `form` is sent as is."""
        auth = (client_id, client_secret or self.client_secret)
        return httpx.post(self.token_endpoint, data=form, auth=auth, timeout=10)

    def client_credentials_token(
        self,
        scope: str = "read write",
        resource: str | None = None,
        client_id: str = TEST_CLIENT_ID,
    ) -> str:
        """An access token for `resource` (default: the configured RESOURCE)."""
        response = self.token_request(
            client_id,
            grant_type="client_credentials",
            scope=scope,
            resource=resource or self.resource,
        )
        if response.status_code != 200:
            raise RuntimeError(f"token request failed: {response.status_code} {response.text}")
        return response.json()["access_token"]

    def introspect(
        self, token: str, client_id: str = RS_CLIENT_ID, client_secret: str | None = None
    ) -> httpx.Response:
        """RFC 7662 introspection, by default as the resource server."""
        auth = (client_id, client_secret or self.rs_client_secret)
        return httpx.post(self.introspection_endpoint, data={"token": token}, auth=auth, timeout=10)

    def revoke(self, token: str, client_id: str = TEST_CLIENT_ID) -> httpx.Response:
        """RFC 7009 revocation by the client the token was issued to."""
        auth = (client_id, self.client_secret)
        return httpx.post(self.revocation_endpoint, data={"token": token}, auth=auth, timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_peer(self.process)


def start_oidc_provider(
    access_token_format: str = "opaque",
    resource: str = "http://127.0.0.1:8000/mcp",
    rs_secret: str = TEST_RS_SECRET,
    *,
    client_secret: str = TEST_CLIENT_SECRET,
    log_dir: Path | None = None,
    timeout: float = 30.0,
) -> OidcProviderPeer:
    """Start oidc-provider on a free port and wait until its discovery document answers.

    `resource` (comma separated for several) is the MCP server URL accepted as resource
    indicator; tokens for it carry `aud` = that URL, in `access_token_format` (opaque | jwt).
    """
    ensure_oidc_provider_installed()
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="oidc-provider-"))
    log = log_dir / f"oidc-provider-{port}.log"
    env = {
        "PORT": str(port),
        "ISSUER": issuer,
        "RESOURCE": resource,
        "ACCESS_TOKEN_FORMAT": access_token_format,
        "RS_CLIENT_SECRET": rs_secret,
        "TEST_CLIENT_SECRET": client_secret,
    }
    process, discovery = start_peer(
        ["node", "server.js"],
        ready_url=f"{issuer}/.well-known/openid-configuration",
        log=log,
        cwd=OIDC_PROVIDER_DIR,
        env=env,
        timeout=timeout,
    )
    return OidcProviderPeer(
        issuer,
        resource,
        access_token_format,
        rs_secret,
        client_secret,
        discovery.json(),
        process,
        log,
    )


@pytest.fixture(scope="session")
def oidc_provider_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., OidcProviderPeer]]:
    """`factory(access_token_format, resource, rs_secret=..., **kw)` starts a peer; every peer
    started is stopped at the end of the session. Share one per module to keep runs light."""
    started: list[OidcProviderPeer] = []

    def factory(
        access_token_format: str = "opaque",
        resource: str = "http://127.0.0.1:8000/mcp",
        rs_secret: str = TEST_RS_SECRET,
        **kwargs: Any,
    ) -> OidcProviderPeer:
        kwargs.setdefault("log_dir", tmp_path_factory.mktemp("oidc-provider"))
        peer = start_oidc_provider(access_token_format, resource, rs_secret, **kwargs)
        started.append(peer)
        return peer

    yield factory
    for peer in started:
        peer.stop()


# -- our resource server, pointed at a peer -------------------------------------------------------
@dataclass
class ResourceServer:
    """Our resource server, running against a peer, and how tests call it."""

    process: ServerProcess
    url: str

    @property
    def origin(self) -> str:
        return self.url.removesuffix("/mcp")

    def metrics(self) -> dict[str, Any]:
        return httpx.get(f"{self.origin}/metrics").json()

    def call(self, token: str, tool: str, arguments: dict | None = None) -> Any:
        """A tool's structured result, called through a real MCP client with `token`."""

        async def session() -> Any:
            async with Client(self.url, auth=token) as client:
                return (await client.call_tool(tool, arguments or {})).data

        return asyncio.run(session())

    def post(self, token: str, tool: str) -> httpx.Response:
        """A raw tools/call, for status codes and headers."""
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        body["params"] = {"name": tool, "arguments": {}}
        headers = {
            "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {token}",
        }
        return httpx.post(self.url, json=body, headers=headers, timeout=30)


def start_resource_server(tmp: Path, port: int, env: dict[str, str]) -> ResourceServer:
    """mcp_resource_server.py on `port`, configured by `env` only (tests/conftest.py)."""
    process = conftest.start_resource_server(tmp, port, env)
    return ResourceServer(process, f"http://127.0.0.1:{port}/mcp")


# -- Entra imitation -------------------------------------------------------------------------------
@contextlib.contextmanager
def start_entra(tenant_id: str | None = None, port: int = 0) -> Iterator[EntraServer]:
    """A fresh imitated tenant (new keys, new app ids) served on 127.0.0.1 until exit."""
    with EntraServer(EntraTokenFactory(tenant_id), port) as server:
        yield server


@pytest.fixture
def entra() -> Iterator[EntraServer]:
    """An imitated Entra tenant per test: `entra.factory` makes tokens, `entra.discovery_url()`
    / `entra.jwks_uri()` / `entra.token_endpoint` are the local URLs."""
    with start_entra() as server:
        yield server
