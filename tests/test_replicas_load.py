"""Two provider replicas under concurrent traffic (issue 14): no token lost, nothing spent twice.

Replicas A and B share one database (PostgreSQL; and SQLite, two processes on one file, as
`--workers` runs it) and one issuer. Eight threads send client_credentials and rotating
refresh requests, alternating between the replicas; the same refresh token is raced at both
while that traffic runs. What the clients received is then compared with what the database
holds: every access token issued is stored once and introspects active at both replicas, each
refresh token was spent at most once, and a raced token gave one rotation (SECURITY.md: the
refresh grace hands the same client's concurrent retries that rotation's answer; with no grace
every other use is a replay, which revokes the family). Nothing here depends on timing: the
threads run to completion and the checks read the final state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy
from sqlalchemy import func, select

from mcp_oauth.provider.hashed_secrets import secret_hash
from mcp_oauth.provider.storage.schema import tokens as tokens_table
from tests.conftest import RS_AUTH, Provider, new_postgres_database, start_provider
from tests.oauth_helpers import CLIENT_ID, Browser
from tests.test_security import introspect, tokens_for

THREADS = 8
CC_PER_THREAD = 12  # client_credentials requests per thread
ROTATIONS = 8  # refreshes per chain, one chain per thread
RACERS = 6  # concurrent uses of one refresh token, alternately at A and B


@dataclass
class Pair:
    a: Provider
    b: Provider
    database_url: str

    def at(self, i: int) -> str:
        return (self.a, self.b)[i % 2].url

    def count(self, *where) -> int:
        engine = sqlalchemy.create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                query = select(func.count()).select_from(tokens_table).where(*where)
                return conn.execute(query).scalar_one()
        finally:
            engine.dispose()


def replica_pair(tmp, database_url: str, args: list[str] | None = None) -> Iterator[Pair]:
    """A and B on `database_url`, both announcing A's URL as the issuer."""
    with ExitStack() as stack:
        a = start_provider(tmp, database_url, args=args)
        stack.callback(a.process.stop)
        b = start_provider(tmp, database_url, args=["--issuer", a.url, *(args or [])])
        stack.callback(b.process.stop)
        yield Pair(a, b, database_url)


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def pair(request, tmp_path_factory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("replicas-load")
    with ExitStack() as stack:
        if request.param == "postgresql":
            url = stack.enter_context(new_postgres_database("oauth_load"))
        else:
            url = f"sqlite:///{tmp}/shared.db"  # one file, two processes
        yield from replica_pair(tmp, url)


def in_threads(count: int, work) -> list:
    """work(i) in `count` threads released together; their results in order."""
    barrier = threading.Barrier(count)

    def run(i: int):
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def refresh_form(refresh_token: str) -> dict:
    return {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT_ID}


def client_credentials_burst(pair: Pair) -> list[str]:
    """THREADS × CC_PER_THREAD client_credentials requests, alternating replicas."""

    def work(i: int) -> list[str]:
        issued = []
        with httpx.Client(timeout=30) as http:
            for j in range(CC_PER_THREAD):
                form = {"grant_type": "client_credentials", "scope": "read"}
                answer = http.post(f"{pair.at(i + j)}/token", data=form, auth=RS_AUTH)
                assert answer.status_code == 200, answer.text
                issued.append(answer.json()["access_token"])
        return issued

    return [token for issued in in_threads(THREADS, work) for token in issued]


def assert_stored_once_and_active_at_both(pair: Pair, access_tokens: list[str]) -> None:
    assert len(set(access_tokens)) == len(access_tokens)
    hashes = [secret_hash(token) for token in access_tokens]
    stored = pair.count(tokens_table.c.token_hash.in_(hashes), tokens_table.c.kind == "access")
    assert stored == len(access_tokens)
    for token in access_tokens:
        for replica in (pair.a, pair.b):
            assert introspect(replica.url, token)["active"] is True


def test_concurrent_client_credentials_across_replicas_lose_no_token(pair):
    rs_tokens = (tokens_table.c.client_id == RS_AUTH[0], tokens_table.c.kind == "access")
    before = pair.count(*rs_tokens)
    issued = client_credentials_burst(pair)
    assert len(issued) == THREADS * CC_PER_THREAD
    assert pair.count(*rs_tokens) - before == len(issued)  # the database holds what was sent
    assert_stored_once_and_active_at_both(pair, issued)


def family_of(pair: Pair, refresh_token: str) -> str:
    engine = sqlalchemy.create_engine(pair.database_url)
    try:
        with engine.connect() as conn:
            query = select(tokens_table.c.grant_id).where(
                tokens_table.c.token_hash == secret_hash(refresh_token)
            )
            return conn.execute(query).scalar_one()
    finally:
        engine.dispose()


def refresh_tokens_of(pair: Pair, family: str, *where) -> int:
    return pair.count(tokens_table.c.grant_id == family, tokens_table.c.kind == "refresh", *where)


def test_concurrent_rotations_alternating_replicas_spend_each_refresh_token_once(pair):
    browser = Browser(pair.a.url, "alice", "password123")
    seeds = [tokens_for(pair.a.url, browser) for _ in range(THREADS)]

    def chain(i: int) -> tuple[list[str], list[str]]:
        refresh_token, access, spent = seeds[i]["refresh_token"], [], []
        with httpx.Client(timeout=30) as http:
            for k in range(ROTATIONS):
                answer = http.post(f"{pair.at(i + k)}/token", data=refresh_form(refresh_token))
                assert answer.status_code == 200, answer.text
                spent.append(refresh_token)
                refresh_token = answer.json()["refresh_token"]
                access.append(answer.json()["access_token"])
        return access, [*spent, refresh_token]

    chains = in_threads(THREADS, chain)
    every_refresh_token = [token for _, chain_tokens in chains for token in chain_tokens]
    assert len(set(every_refresh_token)) == THREADS * (ROTATIONS + 1)
    for i, (access, chain_tokens) in enumerate(chains):
        family = family_of(pair, seeds[i]["refresh_token"])
        # One successor per spent token: a double spend would leave more refresh tokens.
        assert refresh_tokens_of(pair, family) == ROTATIONS + 1
        assert refresh_tokens_of(pair, family, tokens_table.c.used_at.is_not(None)) == ROTATIONS
        assert family_of(pair, chain_tokens[-1]) == family
        for replica in (pair.a, pair.b):
            assert introspect(replica.url, access[-1])["active"] is True


def race(pair: Pair, refresh_token: str) -> list[httpx.Response]:
    def use(i: int) -> httpx.Response:
        with httpx.Client(timeout=30) as http:
            return http.post(f"{pair.at(i)}/token", data=refresh_form(refresh_token))

    return in_threads(RACERS, use)


def test_a_refresh_token_raced_at_both_replicas_under_load_rotates_once(pair):
    """Within the refresh grace (default 30 s) the same client's racing uses get the one
    rotation's answer; no second rotation happens, and the family stays alive."""
    browser = Browser(pair.a.url, "alice", "password123")
    seeds = [tokens_for(pair.a.url, browser) for _ in range(3)]
    with ThreadPoolExecutor(1) as background:
        load = background.submit(client_credentials_burst, pair)
        for seed in seeds:
            answers = race(pair, seed["refresh_token"])
            won = {(r.json()["access_token"], r.json()["refresh_token"])
                   for r in answers if r.status_code == 200}  # fmt: skip
            assert len(won) == 1, [(r.status_code, r.text[:100]) for r in answers]
            for lost in (r for r in answers if r.status_code != 200):
                assert lost.status_code == 400 and lost.json()["error"] == "invalid_grant"
            family = family_of(pair, seed["refresh_token"])
            assert refresh_tokens_of(pair, family) == 2  # the seed and its one successor
            ((access, successor),) = won
            for replica in (pair.a, pair.b):
                assert introspect(replica.url, access)["active"] is True
            assert httpx.post(f"{pair.b.url}/token", data=refresh_form(successor)).is_success
        assert_stored_once_and_active_at_both(pair, load.result())


def test_without_a_grace_a_raced_refresh_token_has_one_winner_and_revokes_the_family(
    tmp_path, postgres_database
):
    """--refresh-grace-seconds 0 (SECURITY.md): every use after the first is a replay. One
    racer wins; the others get invalid_grant and revoke the family, the winner's tokens too."""
    with new_postgres_database("oauth_load_nograce") as url:
        for pair in replica_pair(tmp_path, url, ["--refresh-grace-seconds", "0"]):
            browser = Browser(pair.a.url, "alice", "password123")
            for _ in range(3):
                seed = tokens_for(pair.a.url, browser)
                answers = race(pair, seed["refresh_token"])
                winners = [r for r in answers if r.status_code == 200]
                losers = [r for r in answers if r.status_code != 200]
                assert len(winners) == 1, [(r.status_code, r.text[:100]) for r in answers]
                assert {(r.status_code, r.json()["error"]) for r in losers} == {
                    (400, "invalid_grant")
                }
                family = family_of(pair, seed["refresh_token"])
                assert refresh_tokens_of(pair, family) == 2
                won = winners[0].json()
                for replica in (pair.a, pair.b):
                    assert introspect(replica.url, won["access_token"]) == {"active": False}
                again = httpx.post(f"{pair.a.url}/token", data=refresh_form(won["refresh_token"]))
                assert again.status_code == 400
