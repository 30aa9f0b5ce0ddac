"""The refresh grace (RFC 9700 §4.14.2): a client that lost the answer to a refresh retries
with the refresh token it presented and, within the grace and as the same client, gets the
same tokens again instead of having its family revoked. Outside it, a second use is replay."""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import pytest
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from sqlalchemy import create_engine, text

from mcp_oauth.provider.storage.store import Store
from tests.conftest import RS_AUTH, start_provider
from tests.oauth_helpers import (
    CLIENT_ID,
    REDIRECT_URI,
    Browser,
    auth_params,
    code_for,
    redeem,
    redirect_query,
)

GRACE = 60  # long enough for a kill -9 and a restart


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory) -> str | None:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_database")
    return None


@pytest.fixture(scope="module")
def provider(database_url, tmp_path_factory):
    handle = start_provider(
        tmp_path_factory.mktemp("grace"), database_url, args=["--refresh-grace-seconds", str(GRACE)]
    )
    yield handle
    handle.process.stop()


def user_tokens(provider, browser: Browser | None = None, client_id: str = CLIENT_ID) -> dict:
    browser = browser or Browser(provider.url, "alice", "password123")
    if client_id == CLIENT_ID:
        code, verifier, _ = code_for(browser, scope="read")
    else:
        params, verifier = auth_params(scope="read", client_id=client_id)
        code = redirect_query(browser.authorize(**params))["code"]
    response = redeem(provider.url, code, verifier, client_id=client_id)
    assert response.status_code == 200, response.text
    return response.json()


def refresh(provider, refresh_token: str, client_id: str = CLIENT_ID) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    return httpx.post(f"{provider.url}/token", data=data, timeout=30)


def active(provider, token: str) -> bool:
    response = httpx.post(f"{provider.url}/introspect", data={"token": token}, auth=RS_AUTH)
    return response.json()["active"]


def test_a_retry_within_the_grace_gets_the_same_tokens(provider):
    first = user_tokens(provider)
    rotated = refresh(provider, first["refresh_token"]).json()
    retried = refresh(provider, first["refresh_token"])
    assert retried.status_code == 200, retried.text
    again = retried.json()
    assert (again["access_token"], again["refresh_token"]) == (
        rotated["access_token"],
        rotated["refresh_token"],
    )
    assert active(provider, rotated["access_token"])
    assert refresh(provider, rotated["refresh_token"]).status_code == 200


def test_the_answer_is_kept_only_sealed(provider):
    first = user_tokens(provider)
    rotated = refresh(provider, first["refresh_token"]).json()
    engine = create_engine(provider.database_url)
    with engine.connect() as conn:
        sealed = [row[0] for row in conn.execute(text("SELECT sealed FROM refresh_replies"))]
    engine.dispose()
    assert sealed
    assert not any(rotated["access_token"] in s or rotated["refresh_token"] in s for s in sealed)


def test_a_retry_after_the_new_refresh_token_was_used_is_replay(provider):
    first = user_tokens(provider)
    second = refresh(provider, first["refresh_token"]).json()
    third = refresh(provider, second["refresh_token"]).json()
    replay = refresh(provider, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert not active(provider, third["access_token"])


def test_a_retry_after_the_new_token_was_used_on_a_replica_without_grace_is_replay(
    provider, tmp_path
):
    """The kept answer names the token it bought: once that token is spent, the answer is
    never given again, even when it was spent where no grace applies (a replica of the same
    database running --refresh-grace-seconds 0, as during a change of the setting), so the
    kept answer was not forgotten at that rotation."""
    strict = start_provider(tmp_path, provider.database_url, args=["--refresh-grace-seconds", "0"])
    try:
        first = user_tokens(provider)
        second = refresh(provider, first["refresh_token"]).json()
        third = refresh(strict, second["refresh_token"])
        assert third.status_code == 200, third.text
        replay = refresh(provider, first["refresh_token"])
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        assert not active(provider, third.json()["access_token"])
    finally:
        strict.process.stop()


def test_a_retry_from_another_client_is_refused_and_revokes_the_family(provider):
    other = httpx.post(
        f"{provider.url}/register",
        json={
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": "grace other client",
        },
    ).json()["client_id"]
    first = user_tokens(provider)
    rotated = refresh(provider, first["refresh_token"]).json()
    stolen = refresh(provider, first["refresh_token"], client_id=other)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert not active(provider, rotated["access_token"])


def test_a_retry_after_the_grace_is_replay(database_url, tmp_path):
    grace = 2
    short = start_provider(tmp_path, database_url, args=["--refresh-grace-seconds", str(grace)])
    try:
        first = user_tokens(short)
        rotated = refresh(short, first["refresh_token"]).json()
        time.sleep(grace + 1.1)  # the grace is a whole number of seconds from the rotation
        replay = refresh(short, first["refresh_token"])
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        assert not active(short, rotated["access_token"])
    finally:
        short.process.stop()


def test_grace_zero_makes_every_second_use_a_replay(database_url, tmp_path):
    strict = start_provider(tmp_path, database_url, args=["--refresh-grace-seconds", "0"])
    try:
        first = user_tokens(strict)
        rotated = refresh(strict, first["refresh_token"]).json()
        assert refresh(strict, first["refresh_token"]).status_code == 400
        assert not active(strict, rotated["access_token"])
    finally:
        strict.process.stop()


# -- kill -9 during concurrent refreshes --------------------------------------------------------

FAMILIES = 12


class RefreshingClient(threading.Thread):
    """Refreshes its family again and again until the provider goes away; then `current` is
    the refresh token it presented last, whose answer it may never have received."""

    def __init__(self, provider, tokens: dict):
        super().__init__(daemon=True)
        self.provider, self.current, self.rotations = provider, tokens["refresh_token"], 0

    def run(self) -> None:
        while True:
            try:
                answer = refresh(self.provider, self.current)
            except httpx.TransportError:
                return
            assert answer.status_code == 200, answer.text
            self.current = answer.json()["refresh_token"]
            self.rotations += 1


def test_kill_9_during_concurrent_refreshes_revokes_no_family(database_url, tmp_path):
    crashing = start_provider(tmp_path, database_url, args=["--refresh-grace-seconds", str(GRACE)])
    try:
        browser = Browser(crashing.url, "alice", "password123")
        clients = [
            RefreshingClient(crashing, user_tokens(crashing, browser)) for _ in range(FAMILIES)
        ]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 60
        while sum(c.rotations for c in clients) < 5 * FAMILIES and time.monotonic() < deadline:
            time.sleep(0.05)
        crashing.process.proc.kill()  # SIGKILL, mid-flight
        crashing.process.proc.wait()
        for client in clients:
            client.join(30)
        crashing.process.start()
        # Each client retries with the token it presented last: either its rotation never
        # committed (a normal refresh) or its answer was lost (the grace answers it again).
        retried = [refresh(crashing, client.current) for client in clients]
        assert [r.status_code for r in retried] == [200] * FAMILIES, [r.text for r in retried]
        after = [refresh(crashing, r.json()["refresh_token"]) for r in retried]
        assert [r.status_code for r in after] == [200] * FAMILIES
        assert all(active(crashing, r.json()["access_token"]) for r in after)
    finally:
        crashing.process.stop()


def test_a_sealed_answer_is_a_standard_jwe_only_its_refresh_token_opens(tmp_path):
    """The seal is built by hand for speed (refresh_replies.py), so check it against joserfc:
    a compact JWE (dir, A256GCM) that opens with the key of the presented refresh token only,
    and whose header and ciphertext cannot be altered unnoticed."""
    replies = Store(f"sqlite:///{tmp_path}/seal.db").tokens.replies
    answer = {"access_token": "a", "refresh_token": "r", "expires_in": 3600}
    sealed = replies.seal("presented-token", answer)
    header, key_part, *_ = sealed.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "dir", "enc": "A256GCM"}
    assert key_part == "" and len(sealed.split(".")) == 5
    opened = jwe.decrypt_compact(sealed, OctKey.import_key(replies._key("presented-token")))
    assert json.loads(opened.plaintext) == answer
    with pytest.raises((JoseError, ValueError)):
        jwe.decrypt_compact(sealed, OctKey.import_key(replies._key("another-token")))
    parts = sealed.split(".")
    flipped = parts[3][:-2] + ("A" if parts[3][-2] != "A" else "B") + parts[3][-1]
    with pytest.raises((JoseError, ValueError)):
        jwe.decrypt_compact(
            ".".join([*parts[:3], flipped, parts[4]]),
            OctKey.import_key(replies._key("presented-token")),
        )
    altered = base64.urlsafe_b64encode(b'{"alg":"dir","enc":"A256GCM"}').rstrip(b"=").decode()
    with pytest.raises((JoseError, ValueError)):
        jwe.decrypt_compact(
            ".".join([altered, *parts[1:]]), OctKey.import_key(replies._key("presented-token"))
        )
