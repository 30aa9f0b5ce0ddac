"""PostgreSQL: new token families committed from the event loop (storage/loop_inserts.py,
issue 14): the writes awaited together share one transaction, a write that clashes fails
alone, and none goes through the group committer's writer thread. A real PostgreSQL database
of its own per test."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from sqlalchemy import text

from mcp_oauth.provider.hashed_secrets import new_secret, secret_hash
from mcp_oauth.provider.records import IssuedToken, TokenFamily
from mcp_oauth.provider.storage.store import Store
from mcp_oauth.provider.sync_on_loop import run_sync
from tests.conftest import new_postgres_database


def _family() -> tuple[TokenFamily, list[IssuedToken]]:
    family = TokenFamily("a-client", None, "read", None)
    return family, [IssuedToken(new_secret(), "access", int(time.time()) + 60, "read")]


def _save_on_the_loop(store: Store, made: list) -> list:
    """Each family saved by a grant on the event loop (as client_credentials), all at once:
    what each save returned or raised."""

    async def main() -> list:
        async with store.db.async_reads():
            saves = (run_sync(store.tokens.save_family, *family) for family in made)
            return await asyncio.gather(*saves, return_exceptions=True)

    return asyncio.run(main())


def _inserting_transactions(store: Store, made: list) -> dict[str, str]:
    """The transaction that inserted each stored token of `made` (PostgreSQL's xmin), by hash."""
    hashes = [secret_hash(issued[0].value) for _, issued in made]
    with store.db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT token_hash, xmin::text FROM tokens WHERE token_hash = ANY(:hashes)"),
            {"hashes": hashes},
        )
        return dict(rows.all())


@pytest.fixture
def store():
    with new_postgres_database("loop_inserts") as url:
        store = Store(url)
        yield store
        store.db.engine.dispose()


def test_families_saved_together_on_the_loop_commit_in_one_transaction(store, monkeypatch):
    """Six client_credentials families awaited together: every one stored, by one transaction
    of one executemany per table (the families' rows, then the tokens'), and none through a
    transaction of its own in a worker thread."""

    def alone(job):
        raise AssertionError("a grant on the event loop went to a transaction of its own")

    monkeypatch.setattr(store.db, "transaction", alone)
    batches: list[list[int]] = []
    insert = store.db._async_reader.insert

    async def counted(rows):
        batches.append([len(params) for params in rows.values()])
        return await insert(rows)

    monkeypatch.setattr(store.db._async_reader, "insert", counted)
    made = [_family() for _ in range(6)]
    assert _save_on_the_loop(store, made) == [None] * 6
    assert batches == [[6, 6]]
    inserted_by = _inserting_transactions(store, made)
    assert len(inserted_by) == 6
    assert len(set(inserted_by.values())) == 1


def test_a_family_whose_token_clashes_fails_alone_and_the_others_are_stored(store):
    """One write of the batch holds a token stored already: it alone fails, leaving nothing of
    itself (not its family's row either); the others are stored, each by a transaction of its
    own once the batch was rolled back."""
    stored = _family()
    assert _save_on_the_loop(store, [stored]) == [None]
    clash = (TokenFamily("a-client", None, "read", None), stored[1])
    made = [_family(), clash, _family()]
    outcomes = _save_on_the_loop(store, made)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], psycopg.IntegrityError), outcomes[1]
    assert len(_inserting_transactions(store, [made[0], made[2]])) == 2
    with store.db.engine.connect() as conn:
        families = conn.execute(
            text("SELECT count(*) FROM grants WHERE grant_id = :id"),
            {"id": clash[0].family_id},
        )
        assert families.scalar() == 0
