"""SQLite batches committed by the event loop itself (storage/group_commit.py, _lead_on_loop;
Database.write_now, issue 14): the jobs awaited in one turn of the main thread's loop share
one transaction on the loop's thread, and the loop never waits for a write lock someone
else holds, nor lets one job's failure take the others' work: the batch then goes to the
committer's writer thread. Real SQLite files; the loop is the main thread's, as uvicorn's."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from mcp_oauth.provider.hashed_secrets import secret_hash
from mcp_oauth.provider.storage.store import Store
from mcp_oauth.provider.storage.tokens import insert_family
from mcp_oauth.provider.sync_on_loop import run_sync
from tests.test_provider_grants_on_loop import _family, _stored

LOOP_ANSWER_LIMIT = 5.0  # seconds a lock holder waits for the loop before calling it blocked


def test_jobs_awaited_in_one_turn_are_committed_by_the_loop_in_one_transaction(tmp_path):
    """Each caller is answered once the shared transaction committed (its row is then
    readable from another connection); the commit ran on the loop's own thread."""
    path = f"{tmp_path}/loop.db"
    store = Store(f"sqlite:///{path}")
    made = [_family() for _ in range(6)]
    seen: list[tuple[object, str]] = []

    def grant(index: int) -> bool:
        def job(conn) -> None:
            insert_family(conn, *made[index])
            seen.append((conn.get_transaction(), threading.current_thread().name))

        store.db.grouped(job)
        return secret_hash(made[index][1][0].value) in _stored(path)

    async def main() -> list[bool]:
        return await asyncio.gather(*(run_sync(grant, i) for i in range(len(made))))

    assert asyncio.run(main()) == [True] * len(made)
    assert len({id(transaction) for transaction, _ in seen}) == 1  # (all kept alive in seen)
    assert {name for _, name in seen} == {threading.main_thread().name}


def test_a_job_queued_in_the_next_turn_joins_the_batch(tmp_path):
    """A request read from its socket while the last batch committed starts its task a turn
    later than the requests read before it: its job, queued in the turn after the first one,
    still joins that batch (one transaction, committed by the loop), not the next commit."""
    path = f"{tmp_path}/turns.db"
    store = Store(f"sqlite:///{path}")
    made = [_family() for _ in range(2)]
    seen: list[object] = []

    def grant(index: int) -> None:
        def job(conn) -> None:
            insert_family(conn, *made[index])
            seen.append(conn.get_transaction())

        store.db.grouped(job)

    async def main() -> None:
        first = asyncio.ensure_future(run_sync(grant, 0))
        while not store.db._group._queue:  # the turn in which the first job was queued
            await asyncio.sleep(0)
        second = asyncio.ensure_future(run_sync(grant, 1))  # its task starts in the next turn
        await asyncio.wait_for(asyncio.gather(first, second), 30)

    asyncio.run(main())
    assert len(seen) == 2
    assert seen[0] is seen[1]  # one transaction for both
    assert _stored(path) == {secret_hash(issued[0].value) for _, issued in made}


def _hold_write_lock_in_another_process(path: str):
    """What another process writing looks like to this one: SQLite's write lock taken on a
    connection of its own (no lock of this process held)."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return lambda: (other.execute("COMMIT"), other.close())


def _hold_write_lock_in_a_worker_thread(store: Store):
    """A worker thread of this process inside a write transaction of its own."""
    release, holding = threading.Event(), threading.Event()

    def write() -> None:
        with store.db.write():
            holding.set()
            release.wait(30)

    threading.Thread(target=write, daemon=True).start()
    holding.wait(30)
    return release.set


@pytest.mark.parametrize("holder", ["another process", "a worker thread"])
def test_while_someone_else_holds_the_write_lock_the_loop_goes_on(tmp_path, holder):
    """The loop's attempt fails at once and hands the batch to the writer thread, which waits
    for the lock: meanwhile the loop runs its other tasks (here the one that lets the holder
    finish). A loop waiting in SQLite's busy handler, or for this process's writer lock,
    could not run it: the holder would give up waiting and the job would never be queued
    while the lock is held."""
    path = f"{tmp_path}/held.db"
    store = Store(f"sqlite:///{path}")
    family, issued = _family()
    committed_by: list[str] = []
    if holder == "another process":
        release = _hold_write_lock_in_another_process(path)
    else:
        release = _hold_write_lock_in_a_worker_thread(store)
    loop_answered = threading.Event()
    holder_done = threading.Thread(
        target=lambda: (loop_answered.wait(LOOP_ANSWER_LIMIT), release()), daemon=True
    )

    def job(conn) -> None:
        insert_family(conn, family, issued)
        committed_by.append(threading.current_thread().name)

    async def main() -> None:
        saving = asyncio.ensure_future(run_sync(store.db.grouped, job))
        while not store.db._group._queue:
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the turn in which the loop tries to commit the batch
        await asyncio.sleep(0)
        loop_answered.set()  # only reached if that attempt did not block the loop
        await asyncio.wait_for(saving, 30)

    holder_done.start()
    asyncio.run(main())
    holder_done.join(30)
    assert committed_by == ["group-commit_0"]
    assert _stored(path) == {secret_hash(issued[0].value)}


def test_a_job_that_fails_on_the_loop_fails_only_its_own_request(tmp_path):
    """The loop commits nothing of a batch in which a job raised: the writer thread runs the
    batch again, then each job alone, so only the failing request fails."""
    path = f"{tmp_path}/fail.db"
    store = Store(f"sqlite:///{path}")
    made = [_family() for _ in range(3)]

    def grant(index: int) -> str:
        def job(conn) -> str:
            insert_family(conn, *made[index])
            if index == 1:
                raise ValueError("this request's job fails")
            return "stored"

        try:
            return store.db.grouped(job)
        except ValueError as exc:
            return f"raised: {exc}"

    async def main() -> list[str]:
        return await asyncio.wait_for(asyncio.gather(*(run_sync(grant, i) for i in range(3))), 30)

    assert asyncio.run(main()) == ["stored", "raised: this request's job fails", "stored"]
    assert _stored(path) == {secret_hash(made[i][1][0].value) for i in (0, 2)}
