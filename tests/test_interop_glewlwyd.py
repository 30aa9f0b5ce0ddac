"""The resource server against Glewlwyd 2.7.5 (Debian's OAuth 2.0 / OpenID Connect server), a
second real, independently written authorization server beside node oidc-provider.

Glewlwyd is installed by scripts/install.sh --test (`apt-get install glewlwyd`); it is built
from nothing in a temporary folder (tests/peers/glewlwyd/): its SQLite database from the
package's schema, its configuration, then scopes, users, clients and two OIDC plugins through
its admin REST API. Tokens are issued by Glewlwyd for real, by the authorization code flow
driven over HTTP with a signed-in user's session, for our resource URL (RFC 8707).

The resource server is given the plugin's issuer (OAUTH_PROVIDER_URL) and its client
credentials, nothing else: once in its default `auto` mode, which finds Glewlwyd's OpenID
discovery document (RFC 8414's URL answers 404 there), picks introspection and asks for
signed answers (RFC 9701, which Glewlwyd offers; its answers name no `iss`); and once forced
to validate JWTs (MCP_TOKEN_VALIDATION=jwt), signed RS384 as Glewlwyd's key set declares.

Expiry: a second plugin issues tokens that live BRIEF_LIFETIME seconds, and a second resource
server trusts that plugin. Its token is obtained when the stack starts and polled until
refused, against a deadline from that lifetime (plus, for JWTs, the resource server's default
60 s clock-skew leeway): no sleeping, and the wait overlaps the other tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.peers.glewlwyd import (
    GlewlwydPeer,
    glewlwyd_binary,
    plugin_parameters,
    start_glewlwyd,
)
from tests.support import free_port

pytest.register_assert_rewrite("tests.peer_fixtures")
from tests.peer_fixtures import ResourceServer, start_resource_server  # noqa: E402

MODES = ("auto", "jwt")
MAIN, BRIEF = "mcp", "brief"  # the plugins: tokens for an hour, and for BRIEF_LIFETIME s
BRIEF_LIFETIME = 3
JWT_LEEWAY = 60  # the resource server's default MCP_JWT_LEEWAY, left as it is
APP = ("mcp-client", "glewlwyd-app-secret-0123456789")
RS_CLIENT = ("mcp-resource-server", "glewlwyd-rs-secret-0123456789")
OTHER_RESOURCE = "http://127.0.0.1:9/other-mcp"
"""Another resource Glewlwyd issues tokens for: its tokens must not work at our server."""


@dataclass
class Glewlwyd:
    peer: GlewlwydPeer
    resources: dict[str, tuple[str, str]]
    """For each mode, the URLs of its resource servers: trusting MAIN, and trusting BRIEF."""


@pytest.fixture(scope="module")
def glewlwyd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Glewlwyd]:
    if glewlwyd_binary() is None:
        pytest.skip("Glewlwyd is not installed (scripts/install.sh --test installs it)")
    resources = {
        mode: tuple(f"http://127.0.0.1:{free_port()}/mcp" for _ in (MAIN, BRIEF)) for mode in MODES
    }
    every_url = [url for urls in resources.values() for url in urls] + [OTHER_RESOURCE]
    peer = start_glewlwyd(tmp_path_factory.mktemp("glewlwyd"))
    try:
        for scope in ("read", "write", "admin", "introspect"):
            peer.add_scope(scope)
        peer.add_user("alice", "alice-password-0123", ["read", "write"])
        peer.add_user("bob", "bob-password-0123", ["read"])
        peer.add_client(*APP, grants=["code", "refresh_token"])
        peer.add_client(*RS_CLIENT, grants=["client_credentials"], scopes=["introspect"])
        by_scope = {scope: every_url for scope in ("read", "write", "admin")}
        for plugin, lifetime in ((MAIN, 3600), (BRIEF, BRIEF_LIFETIME)):
            parameters = plugin_parameters(
                resources=by_scope, lifetime=lifetime, introspection_scope="introspect"
            )
            peer.add_oidc_plugin(plugin, parameters)
        peer.grant("alice", APP[0], "read write")  # space separated
        peer.grant("bob", APP[0], "read")
        yield Glewlwyd(peer, resources)  # type: ignore[arg-type]
    finally:
        peer.stop()


@dataclass
class Stack:
    mode: str
    glewlwyd: GlewlwydPeer
    rs: ResourceServer
    brief_rs: ResourceServer
    brief_token: str
    brief_deadline: float
    """monotonic time by which the brief token must be refused."""

    def token(self, user: str, scope: str, resource: str | None = None) -> str:
        """A token Glewlwyd issues `user` (through the app) for our resource, or `resource`."""
        answer = self.glewlwyd.authorization_code_token(
            MAIN, user, APP, scope, resource or self.rs.url
        )
        return answer["access_token"]


@pytest.fixture(scope="module", params=MODES)
def stack(
    request: pytest.FixtureRequest, glewlwyd: Glewlwyd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    mode: str = request.param
    peer = glewlwyd.peer
    tmp = tmp_path_factory.mktemp(f"glewlwyd-{mode}")
    main_url, brief_url = glewlwyd.resources[mode]
    started: list[ResourceServer] = []
    try:
        for plugin, url in ((MAIN, main_url), (BRIEF, brief_url)):
            started.append(start_resource_server(tmp, port_of(url), rs_env(peer, plugin, mode)))
        brief = peer.authorization_code_token(BRIEF, "alice", APP, "read", brief_url)
        wait = BRIEF_LIFETIME + (JWT_LEEWAY if mode == "jwt" else 0) + 30
        yield Stack(mode, peer, *started, brief["access_token"], time.monotonic() + wait)
    finally:
        for rs in started:
            rs.process.stop()


def port_of(url: str) -> int:
    return httpx.URL(url).port or 80


def rs_env(peer: GlewlwydPeer, plugin: str, mode: str) -> dict[str, str]:
    """The resource server's settings: the issuer and its client credentials, and in JWT mode
    that mode; nothing else."""
    env = {
        "OAUTH_PROVIDER_URL": peer.issuer(plugin),
        "MCP_RS_CLIENT_ID": RS_CLIENT[0],
        "MCP_RS_CLIENT_SECRET": RS_CLIENT[1],
    }
    if mode == "jwt":
        env["MCP_TOKEN_VALIDATION"] = "jwt"
    return env


def refusal_reason(response: httpx.Response) -> str:
    return response.json()["error"]["data"]["error_description"]


def assert_invalid_token(response: httpx.Response, *reason_parts: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    reason = refusal_reason(response)
    for part in reason_parts:
        assert part in reason, reason


def test_alice_reads_and_writes_with_a_glewlwyd_token(stack: Stack):
    token = stack.token("alice", "read write")
    assert stack.rs.post(token, "read_data").status_code == 200
    stack.rs.call(token, "write_data", {"key": "peer", "value": f"glewlwyd {stack.mode}"})
    records = stack.rs.call(token, "read_data", {"key": "peer"})["records"]
    assert [r["value"] for r in records] == [f"glewlwyd {stack.mode}"]
    profile = stack.rs.call(token, "get_user_profile")
    # Glewlwyd's `sub` is an opaque id; the name comes from its introspection answer's
    # `username`, or from the JWT's preferred_username (the plugin's additional parameter).
    assert profile["username"] == "alice" and profile["subject"] not in ("alice", "")
    assert profile["client_id"] == APP[0] and profile["scopes"] == ["read", "write"]
    verifier = stack.rs.metrics()["token_verifier"]
    if stack.mode == "auto":
        assert verifier["mode"] == "introspection"
        assert verifier["signed_answers"] >= 1  # RFC 9701, verified
    else:
        assert verifier["mode"] == "jwt" and verifier["accepted"] >= 4


def test_the_same_user_is_the_same_subject_in_every_token(stack: Stack):
    first = stack.rs.call(stack.token("alice", "read"), "get_user_profile")
    second = stack.rs.call(stack.token("alice", "read write"), "get_user_profile")
    assert first["subject"] == second["subject"]  # data is filed by it, not by the name


def test_bob_may_read_but_not_write(stack: Stack):
    token = stack.token("bob", "read")
    assert stack.rs.post(token, "read_data").status_code == 200
    denied = stack.rs.post(token, "write_data")
    assert denied.status_code == 403, denied.text
    challenge = denied.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope", scope="write"'), challenge


def test_a_tampered_token_is_refused(stack: Stack):
    header, payload, signature = stack.token("alice", "read").split(".")
    flipped = signature[:20] + ("A" if signature[20] != "A" else "B") + signature[21:]
    response = stack.rs.post(f"{header}.{payload}.{flipped}", "read_data")
    if stack.mode == "auto":  # unknown to Glewlwyd, which will not sign an answer about it
        assert_invalid_token(response, "would not introspect it")
    else:
        assert_invalid_token(response, "signature does not match any key in")


def test_a_token_for_another_resource_is_refused(stack: Stack):
    elsewhere = stack.token("alice", "read write", resource=OTHER_RESOURCE)
    assert_invalid_token(stack.rs.post(elsewhere, "read_data"), "audience", OTHER_RESOURCE)


@pytest.mark.parametrize("stack", ["auto"], indirect=True)
def test_a_revoked_token_is_refused(stack: Stack):
    """Revoked at Glewlwyd (RFC 7009, by the client it was issued to) before its first use.
    That a token already cached stops working within the cache TTL is the resource server's
    own promise, tested against our provider (test_promises_resource_server)."""
    token = stack.token("alice", "read")
    stack.glewlwyd.revoke(MAIN, token, APP)
    assert_invalid_token(stack.rs.post(token, "read_data"), "would not introspect it")


def test_an_expired_token_is_refused(stack: Stack):
    """The brief plugin's token, obtained when the stack started, polled until refused."""
    while (response := stack.brief_rs.post(stack.brief_token, "read_data")).status_code == 200:
        assert time.monotonic() < stack.brief_deadline, "the expired token is still accepted"
        time.sleep(0.5)
    if stack.mode == "auto":  # Glewlwyd reports it inactive: it signs no answer about it
        assert_invalid_token(response, "would not introspect it")
    else:
        assert_invalid_token(response, "token expired at")
