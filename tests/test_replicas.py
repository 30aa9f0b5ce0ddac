"""Scale-out (issue 6): two provider processes sharing one PostgreSQL database.

In production the replicas sit behind one URL, so they share one issuer: both run with
--issuer set to replica A's URL, and each is talked to on its own port. Everything a replica
knows is in the database (clients, codes, tokens, device codes, throttling counters, the
session and signing keys), so a request may land on either replica at any step.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import delete

from mcp_oauth.provider.storage.schema import login_failures
from mcp_oauth.provider.storage.store import Store
from tests.conftest import Provider, start_provider
from tests.oauth_helpers import CLIENT_ID, REDIRECT_URI, Browser, auth_params, redirect_query
from tests.test_security import (
    HTTP,
    attempt_right_after_five_failures,
    database,
    device_approve,
    device_poll,
    device_start,
    fake_address,
    fresh_postgres_database,
    introspect,
    login_form,
    redeem,
    refresh,
    tokens_for,
    try_login,
)


@dataclass
class Replicas:
    a: Provider
    b: Provider

    @property
    def issuer(self) -> str:
        return self.a.url


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, postgres_database) -> Iterator[Replicas]:
    """Replicas A and B on a PostgreSQL database of their own, issuer = A's URL."""
    tmp = tmp_path_factory.mktemp("replicas")
    with fresh_postgres_database() as url:
        a = start_provider(tmp, url)
        b = start_provider(tmp, url, args=["--issuer", a.url])
        yield Replicas(a, b)
        b.process.stop()
        a.process.stop()


@pytest.fixture(scope="module")
def alice_on_a(replicas) -> Browser:
    return Browser(replicas.a.url, "alice", "password123")


def same_session_on(browser: Browser, url: str) -> Browser:
    """A user agent for another replica carrying `browser`'s cookies (behind one URL a
    browser would send them to whichever replica it reaches)."""
    twin = Browser(url)
    twin.http.cookies = httpx.Cookies(browser.http.cookies)
    return twin


def test_both_replicas_announce_the_shared_issuer_and_keys(replicas):
    for replica in (replicas.a, replicas.b):
        metadata = HTTP.get(f"{replica.url}/.well-known/oauth-authorization-server").json()
        assert metadata["issuer"] == replicas.issuer
    assert (
        HTTP.get(f"{replicas.a.url}/jwks.json").json()
        == HTTP.get(f"{replicas.b.url}/jwks.json").json()
    )


def test_token_issued_by_one_replica_introspects_on_the_other(replicas, alice_on_a):
    tokens = tokens_for(replicas.a.url, alice_on_a, resource=replicas.a.resource)
    answer = introspect(replicas.b.url, tokens["access_token"])
    assert answer["active"] is True and answer["username"] == "alice"
    assert answer["iss"] == replicas.issuer and answer["aud"] == replicas.a.resource


def test_revocation_on_one_replica_is_seen_at_once_by_the_other(replicas, alice_on_a):
    tokens = tokens_for(replicas.a.url, alice_on_a)
    assert introspect(replicas.b.url, tokens["access_token"])["active"] is True
    revoked = HTTP.post(
        f"{replicas.a.url}/revoke", data={"token": tokens["refresh_token"], "client_id": CLIENT_ID}
    )
    assert revoked.status_code == 200
    assert introspect(replicas.b.url, tokens["access_token"]) == {"active": False}
    assert refresh(replicas.b.url, tokens["refresh_token"]).status_code == 400


def test_code_from_a_sign_in_on_one_replica_is_redeemed_at_the_other(replicas, alice_on_a):
    params, verifier = auth_params()
    query = redirect_query(alice_on_a.authorize(**params))
    assert query["iss"] == replicas.issuer  # the shared issuer, not A's own port
    redeemed = redeem(replicas.b.url, query["code"], verifier)
    assert redeemed.status_code == 200, redeemed.text
    assert redeem(replicas.a.url, query["code"], verifier).status_code == 400  # single use


def test_refresh_rotated_on_one_replica_and_replayed_on_the_other_revokes_the_family(
    replicas, alice_on_a
):
    """Rotated twice on A, the first refresh token is replayed on B: beyond the refresh grace
    (its successor was used), so a replay, which revokes the family on both replicas."""
    first = tokens_for(replicas.a.url, alice_on_a)
    second = refresh(replicas.a.url, first["refresh_token"])
    assert second.status_code == 200
    third = refresh(replicas.a.url, second.json()["refresh_token"])
    assert third.status_code == 200
    replay = refresh(replicas.b.url, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert introspect(replicas.a.url, third.json()["access_token"]) == {"active": False}
    assert refresh(replicas.a.url, third.json()["refresh_token"]).status_code == 400


def test_session_cookie_from_one_replica_works_on_the_other(replicas, alice_on_a):
    on_b = same_session_on(alice_on_a, replicas.b.url)
    params, verifier = auth_params()
    consent = on_b.http.get("/authorize", params=params)
    assert consent.status_code == 200 and 'name="decision"' in consent.text  # no sign-in page
    fields = on_b.form_fields(consent)  # B's CSRF token is the one of A's session
    assert fields["csrf_token"] == login_form(alice_on_a)["csrf_token"]
    fields["decision"] = "approve"
    code = redirect_query(on_b.http.post("/authorize", data=fields))["code"]
    assert redeem(replicas.a.url, code, verifier).status_code == 200


def test_device_code_started_on_one_replica_is_approved_and_redeemed_on_the_others(
    replicas, alice_on_a
):
    grant = device_start(replicas.a.url)
    on_b = same_session_on(alice_on_a, replicas.b.url)
    assert "Device connected" in device_approve(on_b, grant["user_code"]).text
    tokens = device_poll(replicas.a.url, grant["device_code"])
    assert tokens.status_code == 200, tokens.text
    assert introspect(replicas.b.url, tokens.json()["access_token"])["active"] is True


def test_login_throttling_is_shared_by_the_replicas(replicas):
    def forget_bob() -> None:
        with database(replicas.a) as conn:
            conn.execute(delete(login_failures).where(login_failures.c.key == "user:bob"))

    on_a, on_b = Browser(replicas.a.url), Browser(replicas.b.url)

    def fail_on_a(_: int) -> None:
        assert try_login(on_a, "bob", "wrong", fake_address()).status_code == 401

    answer = attempt_right_after_five_failures(
        forget_bob,
        fail_on_a,
        lambda: try_login(on_b, "bob", "secret456", fake_address()),
    )
    assert answer.status_code == 429


def race_on_both(replicas: Replicas, form: dict, count: int = 6) -> list[httpx.Response]:
    """POST the same token request to A and B alternately, all at the same instant."""
    clients = [httpx.Client(timeout=30) for _ in range(count)]
    barrier = threading.Barrier(count)
    answers: list[httpx.Response] = []

    def go(i: int) -> None:
        replica = (replicas.a, replicas.b)[i % 2]
        barrier.wait()
        answers.append(clients[i].post(f"{replica.url}/token", data=form))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for client in clients:
        client.close()
    assert len(answers) == count
    return answers


def test_a_refresh_raced_on_both_replicas_has_one_winner(replicas, alice_on_a):
    for _ in range(3):
        tokens = tokens_for(replicas.a.url, alice_on_a)
        form = {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": CLIENT_ID,
        }
        answers = race_on_both(replicas, form)
        # One rotation: the refresh grace gives the same client's racing requests its answer.
        pairs = {
            (a.json()["access_token"], a.json()["refresh_token"])
            for a in answers
            if a.status_code == 200
        }
        assert len(pairs) == 1, [(a.status_code, a.text[:100]) for a in answers]
        assert all(a.status_code in (200, 400) for a in answers)


def test_a_code_raced_on_both_replicas_has_one_winner(replicas, alice_on_a):
    for _ in range(3):
        params, verifier = auth_params()
        form = {
            "grant_type": "authorization_code",
            "code": redirect_query(alice_on_a.authorize(**params))["code"],
            "redirect_uri": REDIRECT_URI,
            "client_id": CLIENT_ID,
            "code_verifier": verifier,
        }
        statuses = sorted(answer.status_code for answer in race_on_both(replicas, form))
        assert statuses == [200, 400, 400, 400, 400, 400]


# -- replicas starting at the same time --------------------------------------------------------


def _at_once(count: int, action) -> list[str]:
    """Run action() in `count` threads released together; the names of the errors raised."""
    barrier = threading.Barrier(count)
    errors: list[str] = []

    def run() -> None:
        barrier.wait()
        try:
            action()
        except Exception as exc:  # what the test is about
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_replicas_starting_together_on_an_empty_database_all_come_up(postgres_database):
    with fresh_postgres_database() as url:
        stores: list[Store] = []
        errors = _at_once(3, lambda: stores.append(Store(url)))
        for store in stores:
            store.engine.dispose()
    assert errors == []


def test_replicas_syncing_the_same_client_at_once_all_succeed(replicas):
    store = Store(replicas.a.database_url)
    try:
        errors = []
        for _ in range(15):
            client_id = f"synced-{uuid.uuid4().hex[:8]}"
            errors += _at_once(3, lambda cid=client_id: store.clients.save(cid, None, {}))
    finally:
        store.engine.dispose()
    assert errors == []


def test_signing_key_and_session_secret_are_created_once(replicas):
    """server_secret tolerates the creation race (IntegrityError -> use the winner's)."""
    store = Store(replicas.a.database_url)
    try:
        name = f"test-secret-{uuid.uuid4().hex[:8]}"
        values: list[str] = []
        errors = _at_once(
            4, lambda: values.append(store.server_secret(name, lambda: uuid.uuid4().hex))
        )
    finally:
        store.engine.dispose()
    assert errors == [] and len(set(values)) == 1
