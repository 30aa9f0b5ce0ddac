"""The resource server against independent peers, all over real HTTP, through a real MCP client.

* node oidc-provider 8.8.1 (a certified, independently written server; our Keycloak stand-in):
  the resource server is given its issuer and client credentials only, and finds the rest by
  discovery. Opaque tokens are served by introspection; JWT access tokens, which that provider
  cannot introspect, by local validation (MCP_TOKEN_VALIDATION=jwt).
* Entra ID cannot run here. It is imitated (tests/peers/entra.py) with its real v1.0 and v2.0
  token shapes, issuers and audiences, signed by a local key set. Its discovery document keeps
  Entra's real issuer (https://login.microsoftonline.com/<tenant>/v2.0) while its endpoints are
  local, so the resource server gets that document's URL (OAUTH_METADATA_URL) beside the issuer
  (OAUTH_PROVIDER_URL), exactly as it would for a provider whose documents live elsewhere. A
  small downstream API (tests/peers/entra_downstream.py) accepts only tokens for its own app.
* our own provider, for RFC 8693 token exchange through the resource server to its
  /api/profile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastmcp.exceptions import ToolError

from mcp_oauth.client.headless import obtain_tokens
from tests.conftest import RS_SECRET, start_provider
from tests.peers.entra_downstream import EntraDownstream
from tests.support import free_port

pytest.register_assert_rewrite("tests.peer_fixtures")
from tests.peer_fixtures import (  # noqa: E402
    EntraServer,
    OidcProviderPeer,
    ResourceServer,
    start_entra,
    start_resource_server,
)

pytest_plugins = ["tests.peer_fixtures"]


# -- node oidc-provider (Keycloak stand-in) ----------------------------------------------------

OTHER_RESOURCE = "http://127.0.0.1:9/other-mcp"
"""Another resource the peer issues tokens for: its tokens must not work at our server."""


@pytest.fixture(scope="module", params=["opaque", "jwt"])
def oidc_stack(
    request: pytest.FixtureRequest,
    oidc_provider_factory: Callable[..., OidcProviderPeer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OidcProviderPeer, ResourceServer]]:
    port = free_port()
    peer = oidc_provider_factory(request.param, f"http://127.0.0.1:{port}/mcp,{OTHER_RESOURCE}")
    env = {
        "OAUTH_PROVIDER_URL": peer.issuer,
        "MCP_RS_CLIENT_ID": "mcp-resource-server",
        "MCP_RS_CLIENT_SECRET": peer.rs_client_secret,
    }
    if request.param == "jwt":  # it advertises introspection, but cannot introspect its JWTs
        env["MCP_TOKEN_VALIDATION"] = "jwt"
    rs = start_resource_server(tmp_path_factory.mktemp("oidc"), port, env)
    yield peer, rs
    rs.process.stop()


def test_oidc_provider_tokens_call_tools(oidc_stack: tuple[OidcProviderPeer, ResourceServer]):
    peer, rs = oidc_stack
    token = peer.client_credentials_token("read write", resource=rs.url)
    rs.call(token, "write_data", {"key": "peer", "value": peer.access_token_format})
    records = rs.call(token, "read_data", {"key": "peer"})["records"]
    assert [r["value"] for r in records] == [peer.access_token_format]
    profile = rs.call(token, "get_user_profile")
    assert profile["client_id"] == "test-client" and profile["scopes"] == ["read", "write"]
    # No user here: its introspection answer names no sub, so the client acts for itself;
    # its RFC 9068 JWT carries sub = the client id.
    opaque = peer.access_token_format == "opaque"
    assert profile["subject"] == ("client:test-client" if opaque else "test-client")

    verifier = rs.metrics()["token_verifier"]
    if peer.access_token_format == "opaque":
        assert verifier["mode"] == "introspection" and verifier["introspections"] >= 1
        # It offers no signed answers (its jwtIntrospection feature is off): plain RFC 7662.
        assert verifier["signed_answers"] == 0
    else:
        assert verifier["mode"] == "jwt" and verifier["accepted"] >= 3
        assert "introspections" not in verifier


def test_oidc_provider_scope_and_audience_enforced(
    oidc_stack: tuple[OidcProviderPeer, ResourceServer],
):
    peer, rs = oidc_stack
    read_only = peer.client_credentials_token("read", resource=rs.url)
    denied = rs.post(read_only, "admin_operation")
    assert denied.status_code == 403
    assert denied.headers["WWW-Authenticate"].startswith(
        'Bearer error="insufficient_scope", scope="admin"'
    )
    garbage = rs.post("not-a-token", "read_data")
    assert garbage.status_code == 401
    assert 'error="invalid_token", error_description="' in garbage.headers["WWW-Authenticate"]
    elsewhere = peer.client_credentials_token("read write admin", resource=OTHER_RESOURCE)
    refused = rs.post(elsewhere, "read_data")
    assert refused.status_code == 401, refused.text
    challenge = refused.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in challenge and "audience" in challenge, challenge


# -- Entra ID (imitated) -----------------------------------------------------------------------


@dataclass
class EntraStack:
    entra: EntraServer
    downstream: EntraDownstream
    rs: ResourceServer


@contextlib.contextmanager
def started_entra_stack(tmp: Path) -> Iterator[EntraStack]:
    """A fresh imitated tenant, its downstream API and a resource server trusting it."""
    with start_entra() as entra, EntraDownstream(entra.factory) as downstream:
        f = entra.factory
        env = {
            "MCP_ENTRA_TENANT_ID": f.tenant_id,
            "MCP_ENTRA_CLIENT_ID": f.api.client_id,
            "OAUTH_PROVIDER_URL": f.issuer_v2,
            "OAUTH_METADATA_URL": entra.discovery_url(),
            "MCP_RS_CLIENT_SECRET": f.api.client_secret,
            "MCP_DOWNSTREAM_URL": downstream.url,
            "MCP_DOWNSTREAM_RESOURCE": f.downstream.app_id_uri,
        }
        rs = start_resource_server(tmp, free_port(), env)
        try:
            yield EntraStack(entra, downstream, rs)
        finally:
            rs.process.stop()


@pytest.fixture(scope="module")
def entra_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EntraStack]:
    """Shared by the Entra tests; none of them changes the tenant's keys."""
    with started_entra_stack(tmp_path_factory.mktemp("entra")) as stack:
        yield stack


def test_entra_metadata_names_entras_issuer_verbatim(entra_stack: EntraStack):
    rs, f = entra_stack.rs, entra_stack.entra.factory
    document = httpx.get(f"{rs.origin}/.well-known/oauth-protected-resource/mcp").json()
    assert document["authorization_servers"] == [
        f"https://login.microsoftonline.com/{f.tenant_id}/v2.0"
    ]


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_entra_tokens_of_both_shapes_call_tools(entra_stack: EntraStack, version: str):
    rs, f = entra_stack.rs, entra_stack.entra.factory
    token = f.access_token(version, scp="read write")
    profile = rs.call(token, "get_user_profile")
    assert profile["username"] == f.user.upn
    assert profile["subject"] == f"{f.user.oid}@{f.tenant_id}"  # stable across v1 and v2
    assert profile["client_id"] == f.client.client_id
    rs.call(token, "write_data", {"key": "version", "value": version})
    assert rs.call(token, "read_data", {"key": "version"})["records"][0]["value"] == version
    assert rs.metrics()["token_verifier"]["mode"] == "jwt"


@pytest.mark.parametrize("version", ["1.0", "2.0"])
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        ("wrong_issuer", "token issuer '"),
        ("wrong_audience", "token audience '"),
        ("foreign_key", "signature does not match any key in http://127.0.0.1:"),
        ("expired", "token expired at "),
    ],
)
def test_entra_bad_tokens_get_401_saying_why(
    entra_stack: EntraStack, version: str, make: str, reason: str
):
    rs = entra_stack.rs
    token = getattr(entra_stack.entra.factory, make)(version)
    response = rs.post(token, "get_user_profile")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer error="invalid_token", error_description="{reason}')
    assert challenge.endswith(
        f'resource_metadata="{rs.origin}/.well-known/oauth-protected-resource/mcp", scope="read"'
    )
    assert response.json()["error"]["data"]["error_description"].startswith(reason)
    log = rs.process.output()
    assert f"Refused a bearer token: {reason}" in log
    assert token.rsplit(".", 1)[1] not in log  # never the token, not even its signature


def test_entra_wrong_audience_names_the_fix(entra_stack: EntraStack):
    f = entra_stack.entra.factory
    response = entra_stack.rs.post(f.wrong_audience("2.0"), "read_data")
    assert response.json()["error"]["data"]["error_description"] == (
        f"token audience {f.downstream.client_id!r} is not this server "
        f"({f.api.client_id} or api://{f.api.client_id})"
    )


def test_entra_on_behalf_of_reaches_the_downstream_api(entra_stack: EntraStack):
    rs, f, downstream = entra_stack.rs, entra_stack.entra.factory, entra_stack.downstream
    token = f.access_token("2.0", scp="read")
    before = rs.metrics()["on_behalf_of"]
    profile = rs.call(token, "get_downstream_profile")["profile"]
    assert profile["oid"] == f.user.oid and profile["preferred_username"] == f.user.upn
    assert profile["aud"] == f.downstream.client_id  # a token for the downstream app…
    assert profile["azp"] == f.api.client_id  # …obtained by the MCP API acting for the user
    assert profile["scp"] == "Files.Read Files.Write"
    # The user's own token (audience: the MCP API) is no good downstream.
    refused = httpx.get(downstream.url, headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401 and "AADSTS500131" in refused.json()["error_description"]
    # A second call reuses the exchanged token.
    assert rs.call(token, "get_downstream_profile")["profile"]["oid"] == f.user.oid
    after = rs.metrics()["on_behalf_of"]
    assert after["exchanges"] - before["exchanges"] == 1
    assert after["downstream_calls"] - before["downstream_calls"] == 2


def test_entra_on_behalf_of_refusal_is_a_clear_tool_error(entra_stack: EntraStack):
    """An app-only token (roles, no user) passes the scope check but cannot be exchanged."""
    app_token = entra_stack.entra.factory.app_token("2.0", roles=("read",))
    with pytest.raises(ToolError, match=r"Could not exchange your token for api://.*AADSTS50034"):
        entra_stack.rs.call(app_token, "get_downstream_profile")


def test_entra_on_behalf_of_exchanges_again_when_the_cached_token_is_refused(tmp_path: Path):
    """On a tenant of its own: it retires the tenant's signing key, which would change what
    the shared tenant's other tests see (and its cached exchanged token would change theirs)."""
    with started_entra_stack(tmp_path) as stack:
        rs, f = stack.rs, stack.entra.factory
        rs.call(f.access_token("2.0", scp="read"), "get_downstream_profile")  # cached now
        f.rotate_keys(retire_old=True)  # the downstream API refuses the cached token from now on
        before = rs.metrics()["on_behalf_of"]
        profile = rs.call(f.access_token("2.0", scp="read"), "get_downstream_profile")["profile"]
        assert profile["oid"] == f.user.oid
        after = rs.metrics()["on_behalf_of"]
        assert after["exchanges"] - before["exchanges"] == 1
        assert after["downstream_calls"] - before["downstream_calls"] == 2  # refused, then fresh


# -- our provider: RFC 8693 token exchange through the resource server -------------------------


@pytest.fixture(scope="module")
def our_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ResourceServer]]:
    tmp = tmp_path_factory.mktemp("exchange")
    port = free_port()
    mcp_url = f"http://127.0.0.1:{port}/mcp"
    provider = start_provider(tmp, env={"OAUTH_RESOURCES": mcp_url})
    env = {"OAUTH_PROVIDER_URL": provider.url, "MCP_RS_CLIENT_SECRET": RS_SECRET}
    rs = start_resource_server(tmp, port, env)
    yield provider.url, rs
    rs.process.stop()
    provider.process.stop()


def test_token_exchange_reaches_userinfo_as_alice_acted_on_by_the_server(
    our_stack: tuple[str, ResourceServer],
):
    issuer, rs = our_stack
    login = obtain_tokens(issuer, "alice", "password123", scope="read write", resource=rs.url)
    alice = asyncio.run(login)["access_token"]
    profile = rs.call(alice, "get_downstream_profile")["profile"]
    assert profile["sub"] == "alice" and profile["username"] == "alice"
    assert profile["act"] == {"sub": "mcp-resource-server"}
    assert profile["scope"] == "read"
    # The downstream API refuses alice's MCP token itself: only the exchanged one works there.
    refused = httpx.get(f"{issuer}/api/profile", headers={"Authorization": f"Bearer {alice}"})
    assert refused.status_code == 401
    assert rs.metrics()["on_behalf_of"]["exchanges"] == 1
