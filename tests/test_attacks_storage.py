"""Anonymous requests must not grow the database forever: registration is limited in size and
per client address (shared by replicas), and the janitor deletes what can no longer matter."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from mcp_oauth.provider.storage.clients import ClientStore
from mcp_oauth.provider.storage.database import Database
from mcp_oauth.provider.storage.janitor import Janitor, Retention
from tests.conftest import new_postgres_database, start_provider
from tests.oauth_helpers import CLIENT_ID, Browser, code_for, redeem

LIMIT = 5
HOUR = 3600


def register(url: str, forwarded_for: str | None = None, **metadata) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    body = {"redirect_uris": ["https://app.example/cb"], "client_name": "flood", **metadata}
    return httpx.post(f"{url}/register", json=body, headers=headers)


def rows(database_url: str, query: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        value = conn.execute(text(query)).scalar() or 0
    engine.dispose()
    return value


@pytest.fixture
def fresh_database(request, tmp_path) -> Iterator[str]:
    """An empty database of its own (the janitor test moves the clock for every row in it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/janitor.db"
        return
    with new_postgres_database("oauth_janitor") as url:
        yield url


@pytest.mark.parametrize("fresh_database", ["sqlite", "postgresql"], indirect=True)
def test_a_registration_flood_from_one_address_stays_bounded(fresh_database, tmp_path):
    args = ["--registrations-per-hour", str(LIMIT)]
    a = start_provider(tmp_path, fresh_database, args=args)
    b = start_provider(tmp_path, fresh_database, args=args)  # a replica on the same database
    try:
        answers = [register(replica.url) for replica in (a, b) * 10]
        assert [r.status_code for r in answers[:LIMIT]] == [201] * LIMIT
        assert {r.status_code for r in answers[LIMIT:]} == {429}
        retry_after = int(answers[-1].headers["retry-after"])
        assert 0 < retry_after <= HOUR
        assert answers[-1].json()["error"] == "too_many_requests"
        self_registered = "SELECT {} FROM clients WHERE preregistered = false"
        assert rows(fresh_database, self_registered.format("count(*)")) == LIMIT
        stored = rows(fresh_database, self_registered.format("sum(length(metadata_json))"))
        assert stored <= LIMIT * 8 * 1024
        # Another address (forwarded by the trusted proxy, uvicorn's FORWARDED_ALLOW_IPS)
        # has its own count.
        assert register(a.url, forwarded_for="203.0.113.9").status_code == 201
    finally:
        a.process.stop()
        b.process.stop()


def test_oversized_registration_metadata_is_refused(tmp_path):
    provider = start_provider(tmp_path, args=["--registrations-per-hour", "0"])
    try:
        big = register(provider.url, logo_uri="https://app.example/" + "a" * 9000)
        assert big.status_code == 400 and big.json()["error"] == "invalid_client_metadata"
        many = register(provider.url, redirect_uris=[f"https://app.example/{i}" for i in range(11)])
        assert many.status_code == 400 and many.json()["error"] == "invalid_redirect_uri"
        long = register(provider.url, redirect_uris=["https://app.example/" + "b" * 2100])
        assert long.status_code == 400 and long.json()["error"] == "invalid_redirect_uri"
        assert (
            rows(provider.database_url, "SELECT count(*) FROM clients WHERE preregistered = false")
            == 0
        )
    finally:
        provider.process.stop()


TABLES = [
    "tokens",
    "grants",
    "authorization_codes",
    "device_codes",
    "refresh_replies",
    "token_exchanges",
    "rate_limits",
]


def counts(database_url: str) -> dict[str, int]:
    return {table: rows(database_url, f"SELECT count(*) FROM {table}") for table in TABLES}


@pytest.mark.parametrize("fresh_database", ["sqlite", "postgresql"], indirect=True)
def test_the_janitor_removes_what_can_no_longer_matter(fresh_database, tmp_path):
    settings = ["--janitor-interval-seconds", "0", "--refresh-grace-seconds", "30"]
    provider = start_provider(
        tmp_path, fresh_database, args=[*settings, "--registrations-per-hour", "20"]
    )
    try:
        browser = Browser(provider.url, "alice", "password123")
        code_for(browser)  # a code never redeemed
        code, verifier, _ = code_for(browser)
        tokens = redeem(provider.url, code, verifier).json()
        refreshed = httpx.post(
            f"{provider.url}/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": CLIENT_ID,
            },
        )
        assert refreshed.status_code == 200
        device = httpx.post(f"{provider.url}/device_authorization", data={"client_id": CLIENT_ID})
        assert device.status_code == 200
        assert register(provider.url).status_code == 201
        Browser(provider.url, "bob", "wrong password")  # a login failure row
    finally:
        provider.process.stop()
    before = counts(fresh_database)
    assert all(before[table] for table in ("tokens", "authorization_codes", "device_codes"))
    assert before["refresh_replies"] and before["rate_limits"]
    db = Database(fresh_database)
    janitor = Janitor(db, Retention(retention=HOUR, unused_client=HOUR), ClientStore(db))
    # Now, nothing live is touched.
    janitor.sweep()
    assert counts(fresh_database)["tokens"] == before["tokens"]
    assert counts(fresh_database)["device_codes"] == before["device_codes"]
    # Once the codes and the device code expired: they go (anyone can ask for them), except
    # the redeemed code, kept while its tokens live so that a replay still revokes them.
    janitor.sweep(at=int(time.time()) + 700)
    after_codes = counts(fresh_database)
    assert after_codes["device_codes"] == 0 and after_codes["authorization_codes"] == 1
    assert after_codes["tokens"] == before["tokens"]
    # A month and a day later every token has expired long ago: all of it goes, and the
    # self-registered client that was never used; the pre-registered clients stay.
    janitor.sweep(at=int(time.time()) + 31 * 24 * HOUR + 2 * HOUR)
    assert counts(fresh_database) == dict.fromkeys(TABLES, 0)
    assert rows(fresh_database, "SELECT count(*) FROM login_failures") == 0
    assert rows(fresh_database, "SELECT count(*) FROM clients WHERE preregistered = false") == 0
    assert rows(fresh_database, "SELECT count(*) FROM clients WHERE preregistered = true") == 2
