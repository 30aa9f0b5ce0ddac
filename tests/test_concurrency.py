"""Races against the real provider, on SQLite and on PostgreSQL (issue 6).

Each race starts its requests in threads that wait at a barrier, so they reach the provider at
the same instant, and is repeated a few rounds. Single use and rotation are decided by the
database (an UPDATE that only matches an unused row, in the transaction that stores the new
tokens), so exactly one request of a race may win. For a code, replay detection then revokes
what it gave. For a refresh token, the refresh grace (--refresh-grace-seconds, default 30)
hands the one rotation's answer to the same client's concurrent retries: one set of tokens,
however many requests.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import select

from mcp_oauth.provider.hashed_secrets import new_secret
from mcp_oauth.provider.records import IssuedToken, TokenFamily
from mcp_oauth.provider.storage.schema import tokens
from mcp_oauth.provider.storage.store import Store
from tests.oauth_helpers import CLIENT_ID, REDIRECT_URI, code_for
from tests.test_security import (
    RS_AUTH,
    device_approve,
    device_start,
    tokens_for,
)

ROUNDS = 4
RACERS = 10


@pytest.fixture(scope="module")
def clients() -> Iterator[list[httpx.Client]]:
    """One client per racer, made in advance (making one takes ~50 ms: it would spread the
    start of the race)."""
    pool = [httpx.Client(timeout=60) for _ in range(RACERS)]
    yield pool
    for client in pool:
        client.close()


def race(clients: list[httpx.Client], *requests: Callable[[httpx.Client], httpx.Response]):
    """Send the requests at the same instant, one per thread; their responses, in order."""
    barrier = threading.Barrier(len(requests))
    answers: list[httpx.Response | BaseException | None] = [None] * len(requests)

    def run(index: int) -> None:
        barrier.wait()
        try:
            answers[index] = requests[index](clients[index])
        except BaseException as exc:  # reported below, with the others
            answers[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    failures = [a for a in answers if not isinstance(a, httpx.Response)]
    assert not failures, failures
    return answers


def post(url: str, **kwargs) -> Callable[[httpx.Client], httpx.Response]:
    """A request to send in a race: POST url with these arguments, on the racer's client."""
    return lambda client: client.post(url, **kwargs)


def statuses(answers: list[httpx.Response]) -> list[int]:
    return sorted(answer.status_code for answer in answers)


def active(client: httpx.Client, url: str, token: str) -> bool:
    answer = client.post(f"{url}/introspect", data={"token": token}, auth=RS_AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()["active"]


def issued_tokens(answers: list[httpx.Response]) -> list[str]:
    found = []
    for answer in answers:
        if answer.status_code == 200:
            body = answer.json()
            found += [body[k] for k in ("access_token", "refresh_token") if k in body]
    return found


def assert_one_winner(answers: list[httpx.Response]) -> None:
    assert statuses(answers) == [200] + [400] * (len(answers) - 1), [
        (a.status_code, a.text[:100]) for a in answers
    ]
    for answer in answers:
        if answer.status_code == 400:
            assert answer.json()["error"] == "invalid_grant", answer.text


# -- one refresh token, ten refreshes ---------------------------------------------------------


def assert_one_rotation(answers: list[httpx.Response]) -> tuple[str, str]:
    """Every success carries the same tokens (the grace repeats the one rotation's answer);
    anything else is invalid_grant. The one (access, refresh) pair issued."""
    pairs = {
        (answer.json()["access_token"], answer.json()["refresh_token"])
        for answer in answers
        if answer.status_code == 200
    }
    assert len(pairs) == 1, [(a.status_code, a.text[:100]) for a in answers]
    for answer in answers:
        if answer.status_code != 200:
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"] == "invalid_grant", answer.text
    return pairs.pop()


def test_simultaneous_refreshes_of_one_token_have_exactly_one_winner(provider, alice, clients):
    """Ten refreshes of one token at once rotate it once: one set of tokens, which works."""
    for _ in range(ROUNDS):
        original = tokens_for(provider.url, alice)
        form = {
            "grant_type": "refresh_token",
            "refresh_token": original["refresh_token"],
            "client_id": CLIENT_ID,
        }
        answers = race(clients, *[post(f"{provider.url}/token", data=form)] * RACERS)
        access, refresh_token = assert_one_rotation(answers)
        assert active(clients[0], provider.url, access)
        form["refresh_token"] = refresh_token
        assert clients[0].post(f"{provider.url}/token", data=form).status_code == 200


# -- one code, ten redemptions ------------------------------------------------------------------


def test_simultaneous_redemptions_of_one_code_have_exactly_one_winner(provider, alice, clients):
    for _ in range(ROUNDS):
        code, verifier, _ = code_for(alice)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": CLIENT_ID,
            "code_verifier": verifier,
        }
        answers = race(clients, *[post(f"{provider.url}/token", data=form)] * RACERS)
        assert_one_winner(answers)
        tokens = issued_tokens(answers)
        assert len(tokens) == 2
        # RFC 6749 §4.1.2: a code used twice revokes what it was exchanged for.
        assert [active(clients[0], provider.url, t) for t in tokens] == [False, False]


# -- revocation against refresh ---------------------------------------------------------------


def test_revocation_racing_a_refresh_leaves_no_live_token(provider, alice, clients):
    """Revoking a refresh token revokes its family; a refresh racing it either loses (the
    family is already revoked) or wins and its new tokens are revoked with the family. Either
    way nothing from the family is active afterwards. Five families race at once per round,
    each with one revocation and one refresh, to widen the window for a bad interleaving."""
    families = RACERS // 2
    for _ in range(ROUNDS):
        originals = [tokens_for(provider.url, alice) for _ in range(families)]
        requests = []
        for original in originals:
            refresh_token = original["refresh_token"]
            requests.append(
                post(
                    f"{provider.url}/revoke",
                    data={"token": refresh_token, "client_id": CLIENT_ID},
                )
            )
            requests.append(
                post(
                    f"{provider.url}/token",
                    data={
                        "grant_type": "refresh_token",
                        "refresh_token": refresh_token,
                        "client_id": CLIENT_ID,
                    },
                )
            )
        answers = race(clients, *requests)
        for original, revoke, refresh in zip(originals, answers[::2], answers[1::2], strict=True):
            assert revoke.status_code == 200, revoke.text
            assert refresh.status_code in (200, 400), refresh.text
            family = [original["access_token"], original["refresh_token"]]
            family += issued_tokens([refresh])
            alive = [t for t in family if active(clients[0], provider.url, t)]
            assert alive == [], (refresh.status_code, refresh.text)


def test_storage_revocation_racing_a_rotation_leaves_nothing_live(provider):
    """The same race at the storage layer, where the interleaving that matters (the rotation's
    transaction open while the revocation's UPDATE runs) happens every few tries rather than
    rarely: rotate_refresh_token locks the family row first, so the revocation waits for it and
    then sees the new tokens. Without that lock, PostgreSQL's revocation misses them."""
    store = Store(provider.database_url)
    try:
        live_after: list[int] = []
        for _ in range(40):
            stamp = int(time.time())
            family = TokenFamily(CLIENT_ID, "alice", "read", None)
            old_refresh = new_secret()
            store.tokens.save_family(
                family,
                [
                    IssuedToken(new_secret(), "access", stamp + 3600, "read"),
                    IssuedToken(old_refresh, "refresh", stamp + 86400, "read"),
                ],
            )
            old = store.tokens.find(old_refresh, "refresh")
            successor = TokenFamily(CLIENT_ID, "alice", "read", None, family_id=family.family_id)
            new = [
                IssuedToken(new_secret(), "access", stamp + 3600, "read"),
                IssuedToken(new_secret(), "refresh", stamp + 86400, "read"),
            ]
            barrier = threading.Barrier(2)

            def rotate(old=old, successor=successor, new=new, barrier=barrier):
                barrier.wait()
                store.tokens.rotate_refresh_token(old, successor, new)

            def revoke(family_id=family.family_id, barrier=barrier):
                barrier.wait()
                store.tokens.revoke_family(family_id)

            threads = [threading.Thread(target=rotate), threading.Thread(target=revoke)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            with store.engine.connect() as conn:
                live = conn.execute(
                    select(tokens.c.token_hash).where(
                        tokens.c.grant_id == family.family_id,
                        tokens.c.revoked_at.is_(None),
                        tokens.c.used_at.is_(None),
                    )
                ).all()
            live_after.append(len(live))
        assert live_after == [0] * 40
    finally:
        store.engine.dispose()


def test_revoking_a_user_racing_their_refreshes_leaves_nothing_alive(provider, bob, clients):
    for _ in range(2):
        grants = [tokens_for(provider.url, bob, scope="read") for _ in range(3)]
        requests = [
            post(f"{provider.url}/admin/revoke-user", data={"username": "bob"}, auth=RS_AUTH)
        ]
        for grant in grants:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": grant["refresh_token"],
                "client_id": CLIENT_ID,
            }
            requests.append(post(f"{provider.url}/token", data=form))
        answers = race(clients, *requests)
        assert answers[0].status_code == 200, answers[0].text
        assert all(a.status_code in (200, 400) for a in answers[1:])
        everything = [g[kind] for g in grants for kind in ("access_token", "refresh_token")]
        everything += issued_tokens(answers[1:])
        alive = [t for t in everything if active(clients[0], provider.url, t)]
        assert alive == []


# -- device code: many polls, one set of tokens ----------------------------------------------


def test_simultaneous_polls_of_an_approved_device_code_get_one_set_of_tokens(
    provider, alice, clients
):
    for _ in range(2):
        grant = device_start(provider.url)
        assert "Device connected" in device_approve(alice, grant["user_code"]).text
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": grant["device_code"],
            "client_id": CLIENT_ID,
        }
        answers = race(clients, *[post(f"{provider.url}/token", data=form)] * RACERS)
        assert statuses(answers).count(200) == 1, [a.text[:80] for a in answers]
        assert all(a.status_code in (200, 400) for a in answers)
        losers = {a.json()["error"] for a in answers if a.status_code == 400}
        assert losers <= {"slow_down", "invalid_grant", "authorization_pending"}


# -- the throttling counters -------------------------------------------------------------------


def test_simultaneous_first_login_failures_of_one_key_are_all_counted(request, provider):
    """Four sign-in failures of one new account at the same instant: each is counted, none
    fails. Driven at the storage layer (the provider's own Store on its database), because
    over HTTP the argon2 check spreads the requests out and the race shows only sometimes."""
    store = Store(provider.database_url)
    try:
        errors, counts = [], []
        for _ in range(15):
            key = f"user:racer-{uuid.uuid4().hex}"
            barrier = threading.Barrier(4)

            def fail(key=key, barrier=barrier):
                barrier.wait()
                try:
                    store.login_throttle.reserve([key])
                except Exception as exc:  # the bug under test
                    errors.append(type(exc).__name__)

            threads = [threading.Thread(target=fail) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            counts.append(store.login_throttle.failures([key])[0][0])
        assert errors == [] and counts == [4] * 15, (errors, counts)
    finally:
        store.engine.dispose()
