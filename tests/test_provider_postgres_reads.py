"""PostgreSQL reads awaited on the event loop (storage/async_reader.py, issue 14): a real
provider on a PostgreSQL database of its own, real HTTP, the database made unreachable with
PostgreSQL's own switches (ALLOW_CONNECTIONS, pg_terminate_backend)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from sqlalchemy import make_url

from mcp_oauth.provider.storage import async_reader
from mcp_oauth.provider.storage.async_reader import APPLICATION_NAME, POOL_SIZE
from mcp_oauth.provider.storage.database import Database
from mcp_oauth.provider.storage.loop_reader import DatabaseBusy
from mcp_oauth.provider.storage.schema import tokens
from mcp_oauth.provider.storage.tokens import FIND_TOKEN, FIND_TOKENS
from tests.conftest import (
    POSTGRES_ADMIN_URL,
    RS_AUTH,
    Provider,
    new_postgres_database,
    start_provider,
)

RECOVERY_SECONDS = 60  # the worker threads' SQLAlchemy pool may take a while to reconnect


@pytest.fixture
def pg_provider(tmp_path) -> Iterator[tuple[Provider, str]]:
    """A provider on a PostgreSQL database nobody else uses, and that database's name."""
    with new_postgres_database("async_reads") as url:
        provider = start_provider(tmp_path, url)
        try:
            yield provider, make_url(url).database
        finally:
            provider.process.stop()


def admin(sql: str, *params) -> list[tuple]:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def end_connections(database: str) -> None:
    """Every connection to `database` ended by the server, as a PostgreSQL restart would."""
    admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        database,
    )


def rs_token(provider: Provider) -> str:
    form = {"grant_type": "client_credentials", "resource": provider.resource}
    response = httpx.post(f"{provider.url}/token", data=form, auth=RS_AUTH)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def introspect(provider: Provider, token: str) -> httpx.Response:
    return httpx.post(f"{provider.url}/introspect", data={"token": token}, auth=RS_AUTH, timeout=30)


def revoke(provider: Provider, token: str) -> None:
    """RFC 7009 revocation: a write in a worker thread, through the pooled connections."""
    response = httpx.post(f"{provider.url}/revoke", data={"token": token}, auth=RS_AUTH, timeout=30)
    assert response.status_code == 200, response.text


def test_introspection_on_postgresql_reads_through_the_event_loops_connections(pg_provider):
    """Once the resource server's client is cached, its introspections read the token through
    the event loop's own connections: those named APPLICATION_NAME."""
    provider, database = pg_provider
    token = rs_token(provider)
    for _ in range(3):
        assert introspect(provider, token).json()["active"] is True
    names = admin("SELECT application_name FROM pg_stat_activity WHERE datname = %s", database)
    assert (APPLICATION_NAME,) in names


def test_a_postgresql_restart_costs_no_introspection(pg_provider):
    """Connections ended under the reader (a server restart) are replaced: the next
    introspection is answered, not failed."""
    provider, database = pg_provider
    token = rs_token(provider)
    assert introspect(provider, token).json()["active"] is True
    end_connections(database)
    answer = introspect(provider, token)
    assert answer.status_code == 200 and answer.json()["active"] is True


def test_a_postgresql_restart_costs_no_token(pg_provider):
    """The connections the writes use, ended while idle (a server restart), are replaced
    before use: the event loop's (a token's family, storage/loop_inserts.py) and the pooled
    ones of the worker threads (a revocation, common/sql.py). The next token is issued and
    stored, and the next revocation done, not a 503."""
    provider, database = pg_provider
    revoke(provider, rs_token(provider))
    end_connections(database)
    deadline = time.monotonic() + 10
    while admin(  # the ended backends are gone: their sockets are closed
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        database,
    )[0][0]:
        assert time.monotonic() < deadline, "the ended connections did not go"
        time.sleep(0.05)
    for _ in range(3):
        token = rs_token(provider)
        assert introspect(provider, token).json()["active"] is True
        revoke(provider, token)
        assert introspect(provider, token).json() == {"active": False}


def test_postgresql_down_at_introspection_is_503_never_inactive_then_recovers(pg_provider):
    """PostgreSQL unreachable: an introspection is 503 temporarily_unavailable with
    Retry-After, never a 401, a 500 or {"active": false} (a resource server would refuse a
    good token), whether its client is cached (the token read awaited on the event loop) or
    not (read in a worker thread); once the database is back, introspection works again
    without a restart."""
    provider, database = pg_provider
    token = rs_token(provider)
    assert introspect(provider, token).json()["active"] is True
    admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        end_connections(database)
        answer = introspect(provider, token)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "temporarily_unavailable"
        assert answer.headers["retry-after"] == "1"
        # A client not cached is read through the pooled connections in a worker thread:
        # the same 503 (not a 401 for a client that could not be looked up, nor a 500).
        uncached = httpx.post(
            f"{provider.url}/introspect", data={"token": token}, auth=("never-seen", "x")
        )
        assert uncached.status_code == 503, uncached.text
        assert uncached.json()["error"] == "temporarily_unavailable"
    finally:
        admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    deadline = time.monotonic() + RECOVERY_SECONDS
    while (answer := introspect(provider, token)).status_code == 503:
        assert time.monotonic() < deadline, "introspection did not recover"
        time.sleep(0.2)
    assert answer.status_code == 200 and answer.json()["active"] is True


def test_a_wrong_secret_is_refused_before_the_token_is_read(pg_provider):
    """RFC 7662 §2.1: the client is authenticated before anything about the token is looked
    up. With PostgreSQL unreachable, the resource server's cached client presenting a wrong
    secret gets 401 invalid_client (decided from the cache, no read tried), while the right
    secret gets the 503 of a token read that could not be made."""
    provider, database = pg_provider
    token = rs_token(provider)
    assert introspect(provider, token).json()["active"] is True  # the client is now cached
    admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        end_connections(database)
        client_id, _ = RS_AUTH
        for endpoint in ("introspect", "revoke"):
            wrong = httpx.post(
                f"{provider.url}/{endpoint}", data={"token": token}, auth=(client_id, "wrong")
            )
            assert wrong.status_code == 401, wrong.text
            assert wrong.json()["error"] == "invalid_client"
        assert introspect(provider, token).status_code == 503
    finally:
        admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


def test_postgresql_down_at_the_token_endpoint_is_503(pg_provider):
    """A grant that cannot store its tokens because PostgreSQL is unreachable is answered
    503 temporarily_unavailable with Retry-After (the outage is not the client's fault), not
    a 500, for a client whether cached (the grant on the event loop, its write in a worker
    thread) or not (its lookup awaited through the event loop's connections)."""
    provider, database = pg_provider
    rs_token(provider)  # the resource server's client is now cached
    admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        end_connections(database)
        form = {"grant_type": "client_credentials", "resource": provider.resource}
        for auth in (RS_AUTH, ("never-seen", "x")):
            answer = httpx.post(f"{provider.url}/token", data=form, auth=auth, timeout=30)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "temporarily_unavailable"
            assert answer.headers["retry-after"] == "1"
    finally:
        admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


def _stored_tokens(db: Database, count: int) -> list[str]:
    """`count` token hashes stored in `db`, token n of client-n."""
    stored = [f"{n:064x}" for n in range(count)]
    with db.write() as conn:
        conn.execute(
            tokens.insert(),
            [
                {"token_hash": key, "kind": "access", "grant_id": f"family-{n}",
                 "client_id": f"client-{n}", "scope": "read", "issued_at": 0,
                 "expires_at": 2**31 - 1}
                for n, key in enumerate(stored)
            ],
        )  # fmt: skip
    return stored


def _counted_queries(db: Database) -> list[dict]:
    """The parameters of each query the event loop's reads send from now on, in order."""
    reader, queries = db._async_reader, []
    answer = reader._answer

    async def counted(sql, params, fetch, **prepare):
        queries.append(params)
        return await answer(sql, params, fetch, **prepare)

    reader._answer = counted
    return queries


def test_token_reads_asked_for_together_share_one_query_and_each_gets_its_own_row():
    """Introspections on PostgreSQL read tokens in batches (AsyncReader.first_by_key): the
    reads asked for in one turn of the event loop are answered by one query, and each reader
    gets the row of its own key, or None for an unknown one: never another reader's token
    (a stored token, an unknown one and the same token twice, interleaved)."""
    with new_postgres_database("keyed_reads") as url:
        db = Database(url)
        stored = _stored_tokens(db, 12)
        unknown = [f"{n:064x}" for n in range(100, 106)]
        queries = _counted_queries(db)
        asked = [key for pair in zip(stored + stored[:6], unknown * 3, strict=True) for key in pair]

        async def read_all() -> tuple[list, dict]:
            async with db.async_reads():
                together = await asyncio.gather(
                    *(db.read_by_key_async(FIND_TOKEN, FIND_TOKENS, "token_hash", key)
                      for key in asked)
                )  # fmt: skip
                alone = await db.read_by_key_async(FIND_TOKEN, FIND_TOKENS, "token_hash", stored[3])
                return together, alone

        rows, alone = asyncio.run(read_all())
        db.engine.dispose()
    for key, row in zip(asked, rows, strict=True):
        if key in stored:
            assert row["token_hash"] == key
            assert row["client_id"] == f"client-{stored.index(key)}"
        else:
            assert row is None
    assert len(queries) == 2, queries
    assert sorted(queries[0]["keys"]) == sorted(set(asked))
    # A read with no other waiting is the single-key statement, as before batching.
    assert queries[1] == {"token_hash": stored[3]} and alone["client_id"] == "client-3"


def test_a_token_read_asked_for_in_the_next_turn_joins_the_first_query():
    """An introspection read from its socket a turn after another (its task starts a turn
    later) is still answered by the same query as the one before it: one `= ANY` query for
    both keys, each reader its own row."""
    with new_postgres_database("next_turn_reads") as url:
        db = Database(url)
        stored = _stored_tokens(db, 2)
        queries = _counted_queries(db)

        async def read(key: str):
            return await db.read_by_key_async(FIND_TOKEN, FIND_TOKENS, "token_hash", key)

        async def read_in_two_turns() -> list:
            async with db.async_reads():
                first = asyncio.ensure_future(read(stored[0]))
                await asyncio.sleep(0)  # the first read is asked for in this turn
                second = asyncio.ensure_future(read(stored[1]))  # and this one in the next
                return await asyncio.gather(first, second)

        rows = asyncio.run(read_in_two_turns())
        db.engine.dispose()
    assert [row["token_hash"] for row in rows] == stored
    assert len(queries) == 1, queries
    assert sorted(queries[0]["keys"]) == sorted(stored)


def test_batched_token_reads_are_planned_for_their_own_keys():
    """The batch read (`= ANY(:keys)`) is planned for each execution's keys, never from a
    plan PostgreSQL kept since the table was nearly empty: such a generic plan scanned the
    whole tokens table, and every introspection slowed as client_credentials filled it (0.1
    ms became 3-5 ms a read, measured). PostgreSQL's own list of prepared statements, with
    their counts of generic plans, says which it used."""
    with new_postgres_database("custom_plans") as url:
        db = Database(url)
        stored = _stored_tokens(db, 2)

        async def read_and_count_plans() -> list[dict]:
            reader = db._async_reader
            async with db.async_reads():
                for _ in range(24):  # PostgreSQL turns to a generic plan after five, per connection
                    pair = await asyncio.gather(
                        *(db.read_by_key_async(FIND_TOKEN, FIND_TOKENS, "token_hash", key)
                          for key in stored)
                    )  # fmt: skip
                    assert [row["token_hash"] for row in pair] == stored
                plans = []
                assert 0 < len(reader._idle) <= POOL_SIZE  # every connection, idle now
                for conn in reader._idle:
                    cursor = await conn.execute(
                        "SELECT generic_plans FROM pg_prepared_statements "
                        "WHERE statement LIKE 'SELECT tokens.%= ANY%'"
                    )
                    plans += await cursor.fetchall()
                return plans

        plans = asyncio.run(read_and_count_plans())
        db.engine.dispose()
    assert sum(plan["generic_plans"] for plan in plans) == 0, plans


SLEEP = "SELECT pg_sleep(%(seconds)s), %(n)s::int AS n"


def test_the_event_loops_reads_hold_at_most_pool_size_connections():
    """Reads asked for at once wait for one of POOL_SIZE connections: PostgreSQL sees no more
    from this process however many readers there are."""
    with new_postgres_database("read_slots") as url:
        db = Database(url)
        reader = db._async_reader

        async def many_reads() -> tuple[list, list]:
            async with db.async_reads():
                rows = await asyncio.gather(
                    *(reader._answer(SLEEP, {"seconds": 0.2, "n": n}, psycopg.AsyncCursor.fetchone)
                      for n in range(3 * POOL_SIZE))
                )  # fmt: skip
                return rows, reader._idle[:]

        rows, idle = asyncio.run(many_reads())
        db.engine.dispose()
    assert [row["n"] for row in rows] == list(range(3 * POOL_SIZE))
    assert len(idle) == POOL_SIZE


def test_a_read_cut_off_by_its_timeout_never_hands_its_connection_on(monkeypatch):
    """A query still running when its read gives up (READ_TIMEOUT_SECONDS) leaves its
    connection busy: that connection is closed, never reused, and the next read is answered
    on another."""
    monkeypatch.setattr(async_reader, "READ_TIMEOUT_SECONDS", 0.3)
    with new_postgres_database("cut_off_reads") as url:
        db = Database(url)
        reader = db._async_reader

        async def cut_off_then_read():
            async with db.async_reads():
                with pytest.raises(DatabaseBusy):
                    await reader._answer(
                        SLEEP, {"seconds": 5, "n": 1}, psycopg.AsyncCursor.fetchone
                    )
                idle_after_cut = reader._idle[:]
                row = await reader._answer(
                    SLEEP, {"seconds": 0, "n": 2}, psycopg.AsyncCursor.fetchone
                )
                return idle_after_cut, row

        idle_after_cut, row = asyncio.run(cut_off_then_read())
        db.engine.dispose()
    assert idle_after_cut == []
    assert row["n"] == 2
