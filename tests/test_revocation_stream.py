"""Revocation reaches the running resource server through the provider's security event
stream (issue 13), in introspection and JWT mode, on SQLite and on two PostgreSQL replicas.

The resource server runs with its defaults: while the stream is healthy an accepted answer is
kept 300 s, and in JWT mode a token verifies locally until it expires (1 h). So a refusal
within the deadline below can only come from the event; each test also reads the counters
that say so (the event refused the token, the kept answer was evicted before its TTL). The
figure of "within a second" is measured by bench/revocation_latency.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from mcp_oauth.client.headless import obtain_tokens
from mcp_oauth.provider.storage.store import Store
from tests.conftest import (
    RS_AUTH,
    RS_SECRET,
    Provider,
    new_postgres_database,
    start_provider,
    start_resource_server,
)
from tests.support import ServerProcess, free_port

EVENT_DEADLINE = 5.0  # seconds: far below the 300 s TTL and the 1 h JWT lifetime
RECONNECT_DEADLINE = 40.0  # the receiver retries at most every 30 s (MAX_PAUSE), plus a poll
PASSWORDS = {"alice": "password123", "bob": "secret456", "admin": "admin789"}


@dataclass
class Setup:
    replicas: list[Provider]
    rs: ServerProcess
    mcp_url: str
    mode: str

    @property
    def issuer(self) -> str:
        return self.replicas[0].url

    def login(self, username: str) -> dict:
        coro = obtain_tokens(
            self.issuer, username, PASSWORDS[username], scope="read", resource=self.mcp_url
        )
        return asyncio.run(coro)

    def call(self, token: str) -> httpx.Response:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "get_user_profile", "arguments": {}},
        }
        headers = {
            "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {token}",
        }
        return httpx.post(self.mcp_url, json=body, headers=headers, timeout=30)

    def metrics(self) -> dict:
        return httpx.get(self.mcp_url.removesuffix("/mcp") + "/metrics").json()

    def wait_until_healthy(self, deadline: float = RECONNECT_DEADLINE) -> None:
        until = time.monotonic() + deadline
        while self.metrics()["revocation_events"]["state"] != "healthy":
            assert time.monotonic() < until, self.metrics()["revocation_events"]
            time.sleep(0.05)

    def refused_within(self, token: str, deadline: float) -> httpx.Response:
        """Call until the token is refused (401); fail if it is still accepted at the deadline."""
        until = time.monotonic() + deadline
        while (response := self.call(token)).status_code == 200:
            assert time.monotonic() < until, "revoked token still accepted"
            time.sleep(0.02)
        assert response.status_code == 401, response.text
        return response


@pytest.fixture(
    scope="module",
    params=[
        ("sqlite", "introspection"),
        ("sqlite", "jwt"),
        ("postgresql", "introspection"),
        ("postgresql", "jwt"),
    ],
    ids=lambda param: "-".join(param),
)
def setup(request, tmp_path_factory) -> Iterator[Setup]:
    """A provider (SQLite) or replicas A and B sharing PostgreSQL (issuer = A), issuing opaque
    tokens or JWTs; a resource server with default cache settings, receiving from A."""
    database, mode = request.param
    tmp = tmp_path_factory.mktemp(f"revocation-{database}-{mode}")
    port = free_port()
    mcp_url = f"http://127.0.0.1:{port}/mcp"
    args = ["--access-token-format", "jwt"] if mode == "jwt" else []
    with ExitStack() as cleanup:
        url = None
        if database == "postgresql":
            url = cleanup.enter_context(new_postgres_database("revocation"))
        a = start_provider(tmp, url, resource=mcp_url, args=args)
        cleanup.callback(a.process.stop)
        replicas = [a]
        if database == "postgresql":
            b = start_provider(tmp, url, resource=mcp_url, args=[*args, "--issuer", a.url])
            cleanup.callback(b.process.stop)
            replicas.append(b)
        env = {"OAUTH_PROVIDER_URL": a.url, "MCP_RS_CLIENT_SECRET": RS_SECRET}
        rs = start_resource_server(tmp, port, {**env, "MCP_TOKEN_VALIDATION": mode})
        cleanup.callback(rs.stop)
        setup = Setup(replicas, rs, mcp_url, mode)
        setup.wait_until_healthy()
        yield setup


def accepted_and_kept(setup: Setup, token: str) -> dict:
    """The token works and (introspection mode) its answer is kept 300 s; the counters now."""
    assert setup.call(token).status_code == 200
    before = setup.metrics()
    if setup.mode == "introspection":
        assert before["token_verifier"]["kept_answer_ttl"] == 300
    return before


def assert_refused_by_the_event(setup: Setup, response: httpx.Response, before: dict) -> None:
    """The refusal names the event, and the counters show the event refused it (in
    introspection mode also that the kept answer was evicted, long before its 300 s)."""
    assert "security event" in response.headers["www-authenticate"]
    after = setup.metrics()
    events, earlier = after["revocation_events"], before["revocation_events"]
    assert events["events_applied"] > earlier["events_applied"]
    assert events["refused_by_event"] > earlier["refused_by_event"]
    if setup.mode == "introspection":
        evicted = after["token_verifier"]["kept_answers_evicted_by_event"]
        assert evicted > before["token_verifier"]["kept_answers_evicted_by_event"]


def test_a_token_revoked_at_either_replica_is_refused_by_the_running_server(setup):
    for replica in setup.replicas:
        token = setup.login("alice")["access_token"]
        before = accepted_and_kept(setup, token)
        form = {"token": token, "client_id": "mcp-client"}
        assert httpx.post(f"{replica.url}/revoke", data=form).status_code == 200
        assert_refused_by_the_event(setup, setup.refused_within(token, EVENT_DEADLINE), before)


def test_a_revoked_refresh_token_takes_its_access_token_with_it_at_once(setup):
    for replica in setup.replicas:
        tokens = setup.login("alice")
        before = accepted_and_kept(setup, tokens["access_token"])
        form = {"token": tokens["refresh_token"], "client_id": "mcp-client"}
        assert httpx.post(f"{replica.url}/revoke", data=form).status_code == 200
        response = setup.refused_within(tokens["access_token"], EVENT_DEADLINE)
        assert_refused_by_the_event(setup, response, before)


def test_the_admin_revoke_user_takes_effect_at_once(setup):
    for replica in setup.replicas:
        token = setup.login("bob")["access_token"]
        before = accepted_and_kept(setup, token)
        url = f"{replica.url}/admin/revoke-user"
        answer = httpx.post(url, data={"username": "bob"}, auth=RS_AUTH)
        assert answer.status_code == 200 and answer.json()["revoked"] >= 1
        assert_refused_by_the_event(setup, setup.refused_within(token, EVENT_DEADLINE), before)
        fresh = setup.login("bob")["access_token"]  # signing in again afterwards works
        assert setup.call(fresh).status_code == 200


def revoke_in_the_database(setup: Setup, token: str) -> None:
    """Revoke through the provider's storage, as a replica would (the event is appended in
    the same transaction)."""
    store = Store(setup.replicas[-1].database_url)
    record = store.tokens.find(token)
    assert record is not None
    store.tokens.revoke(record)
    store.engine.dispose()


def test_revocations_while_disconnected_are_refused_once_reconnected(setup):
    """The provider the resource server receives from goes away; tokens are revoked meanwhile
    (at replica B, or in the database on SQLite); once it is back, the server refuses them."""
    tokens = [setup.login(name)["access_token"] for name in ("alice", "admin")]
    for token in tokens:
        assert setup.call(token).status_code == 200
    gaps = setup.metrics()["revocation_events"]["gaps"]
    a = setup.replicas[0]
    a.process.stop()
    try:
        until = time.monotonic() + RECONNECT_DEADLINE
        while setup.metrics()["revocation_events"]["state"] == "healthy":
            assert time.monotonic() < until
            time.sleep(0.05)
        for token in tokens:
            if len(setup.replicas) == 2:
                form = {"token": token, "client_id": "mcp-client"}
                assert httpx.post(f"{setup.replicas[1].url}/revoke", data=form).status_code == 200
            else:
                revoke_in_the_database(setup, token)
    finally:
        a.process.start()
    setup.wait_until_healthy()
    for token in tokens:
        response = setup.refused_within(token, EVENT_DEADLINE)
        if setup.mode == "jwt":  # nothing but the events can refuse a verified JWT
            assert "security event" in response.headers["www-authenticate"]
    assert setup.metrics()["revocation_events"]["gaps"] > gaps


def test_a_restarted_server_learns_the_revocations_it_missed(setup):
    """A new stream starts at the first event whose tokens may still be live: a server that was
    down while a token was revoked refuses it (in JWT mode only the event can say so)."""
    token = setup.login("alice")["access_token"]
    assert setup.call(token).status_code == 200
    setup.rs.stop()
    try:
        form = {"token": token, "client_id": "mcp-client"}
        assert httpx.post(f"{setup.replicas[-1].url}/revoke", data=form).status_code == 200
    finally:
        setup.rs.start()
    setup.wait_until_healthy()
    response = setup.refused_within(token, EVENT_DEADLINE)
    if setup.mode == "jwt":
        assert "security event" in response.headers["www-authenticate"]


def test_while_the_stream_is_down_answers_are_kept_only_the_ordinary_ttl(setup):
    """Healthy: answers kept 300 s. Provider gone: what was kept is dropped and only the
    introspection cache's 60 s applies; back: 300 s again."""
    if setup.mode == "jwt":
        pytest.skip("JWTs are not cached")
    token = setup.login("alice")["access_token"]
    assert setup.call(token).status_code == 200
    verifier = setup.metrics()["token_verifier"]
    assert verifier["kept_answer_ttl"] == 300 and verifier["kept_answers"] >= 1
    a = setup.replicas[0]
    a.process.stop()
    try:
        until = time.monotonic() + RECONNECT_DEADLINE
        while setup.metrics()["revocation_events"]["state"] == "healthy":
            assert time.monotonic() < until
            time.sleep(0.05)
        verifier = setup.metrics()["token_verifier"]
        assert verifier["kept_answer_ttl"] == 0 and verifier["kept_answers"] == 0
    finally:
        a.process.start()
    setup.wait_until_healthy()
    assert setup.metrics()["token_verifier"]["kept_answer_ttl"] == 300
