"""Grants on the event loop (sync_on_loop.py, issue 14): synchronous grant code run in a
greenlet that awaits the database, the group committer's awaited jobs
(storage/group_commit.py, run_async), and the guard that keeps a blocking write transaction
off the event loop. Real SQLite files, a real provider app in process."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
import weakref

import greenlet
import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

import oauth_provider
from mcp_oauth.provider.hashed_secrets import new_secret, secret_hash
from mcp_oauth.provider.records import IssuedToken, TokenFamily
from mcp_oauth.provider.storage.database import Database
from mcp_oauth.provider.storage.store import Store
from mcp_oauth.provider.storage.tokens import family_inserts, insert_family
from mcp_oauth.provider.sync_on_loop import off_loop, on_event_loop, run_sync, wait_for
from tests.conftest import new_postgres_database

RS_SECRET = "test-secret-0123456789abcdef0123456789"


# -- sync_on_loop -------------------------------------------------------------------------------


def test_synchronous_code_waits_for_awaitables_on_the_loop_and_others_run_meanwhile():
    """Inside run_sync, wait_for gives the awaitable's result; while it waits, other tasks of
    the loop run (here one that sets the event the waiting code needs)."""
    order: list[str] = []

    def grant(ready: asyncio.Event) -> str:
        assert on_event_loop()
        order.append("grant waits")
        wait_for(ready.wait())
        order.append("grant resumed")
        return "answer"

    async def main() -> str:
        ready = asyncio.Event()

        async def other() -> None:
            order.append("other task ran")
            ready.set()

        task = asyncio.ensure_future(run_sync(grant, ready))
        asyncio.ensure_future(other())
        return await task

    assert asyncio.run(main()) == "answer"
    assert order == ["grant waits", "other task ran", "grant resumed"]
    assert not on_event_loop()


def test_an_awaitable_that_raises_raises_where_the_synchronous_code_waits():
    async def failing() -> None:
        raise LookupError("from the awaitable")

    def grant() -> str:
        try:
            wait_for(failing())
        except LookupError as exc:
            return f"caught {exc}"
        return "not raised"

    assert asyncio.run(run_sync(grant)) == "caught from the awaitable"


def test_run_sync_reuses_its_greenlets_and_an_idle_one_keeps_nothing_of_its_call():
    """A greenlet serves one run_sync after another (making one per call cost a sixth of a
    client_credentials request, issue 14), also after a call that raised; and while idle it
    holds nothing of the last call: its argument, result and exception can be collected."""

    class Value:
        pass

    class Refused(Exception):
        pass

    ran_in: list[greenlet.greenlet] = []

    def grant(argument: Value, fail: bool) -> Value:
        ran_in.append(greenlet.getcurrent())
        wait_for(asyncio.sleep(0))
        if fail:
            raise Refused(argument)
        return Value()

    async def main() -> list[list]:
        left_behind = []  # after each call, what is still alive of it
        try:
            await run_sync(grant, Value(), True)
        except Refused as exc:
            refs = [weakref.ref(exc)]
        gc.collect()
        left_behind.append([ref() for ref in refs])
        argument = Value()
        refs = [weakref.ref(argument), weakref.ref(await run_sync(grant, argument, False))]
        del argument
        gc.collect()
        left_behind.append([ref() for ref in refs])
        return left_behind

    assert asyncio.run(main()) == [[None], [None, None]]
    assert len(ran_in) == 2 and ran_in[0] is ran_in[1]


def test_wait_for_outside_run_sync_is_refused():
    async def never() -> None:
        raise AssertionError("must not run")

    with pytest.raises(RuntimeError, match="outside run_sync"):
        wait_for(never())


def test_blocking_work_leaves_the_loop_only_when_on_it():
    """off_loop: a worker thread inside run_sync, the caller's own thread otherwise."""
    here = threading.get_ident()
    assert off_loop(threading.get_ident) == here

    def grant() -> int:
        return off_loop(threading.get_ident)

    async def main() -> tuple[int, int]:
        return threading.get_ident(), await run_sync(grant)

    loop_thread, worker = asyncio.run(main())
    assert worker != loop_thread


# -- the database on the event loop ---------------------------------------------------------------


def _family() -> tuple[TokenFamily, list[IssuedToken]]:
    family = TokenFamily("a-client", None, "read", None)
    return family, [IssuedToken(new_secret(), "access", int(time.time()) + 60, "read")]


def _stored(path: str) -> set[str]:
    with sqlite3.connect(path) as other:
        return {row[0] for row in other.execute("SELECT token_hash FROM tokens")}


def test_a_write_transaction_is_refused_on_the_event_loop(tmp_path):
    """Database.write would block the loop for the write lock and the fsync: inside run_sync
    it raises, and Database.transaction runs the same job in a worker thread instead."""
    store = Store(f"sqlite:///{tmp_path}/guard.db")
    family, issued = _family()

    def blocking() -> None:
        with store.db.write():
            pass

    def in_transaction() -> str:
        def job(conn) -> str:
            insert_family(conn, family, issued)
            return threading.current_thread().name

        return store.db.transaction(job)

    with pytest.raises(RuntimeError, match="would block the event loop"):
        asyncio.run(run_sync(blocking))
    thread_name = asyncio.run(run_sync(in_transaction))
    assert thread_name != threading.current_thread().name
    assert _stored(f"{tmp_path}/guard.db") == {secret_hash(issued[0].value)}


def _run_loop_in_thread(coroutine_factory) -> tuple[threading.Thread, list]:
    result: list = []

    def run() -> None:
        result.append(asyncio.run(coroutine_factory()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _queued_then_committed(committer, coroutine_factory, count: int) -> list:
    """The result of running `coroutine_factory`'s event loop in a thread while a commit is
    under way (the committer's leader lock held) until `count` jobs queued behind it, then
    letting them commit: so the jobs are sure to share one batch."""
    with committer._leader:
        thread, result = _run_loop_in_thread(coroutine_factory)
        deadline = time.monotonic() + 30
        while len(committer._queue) < count:
            assert time.monotonic() < deadline, "the jobs were not queued"
            time.sleep(0.01)
    thread.join(30)
    return result


def test_jobs_awaited_on_the_loop_share_one_commit_in_the_writer_thread(tmp_path):
    """Requests queued while a commit is under way are committed together by the committer's
    writer thread, and each caller is answered only once that transaction committed (its
    row is then readable from another connection)."""
    path = f"{tmp_path}/batch.db"
    store = Store(f"sqlite:///{path}")
    committer = store.db._group
    made = [_family() for _ in range(8)]
    seen: list[tuple[object, str]] = []

    def saving(index: int):
        def job(conn) -> int:
            insert_family(conn, *made[index])
            seen.append((conn, threading.current_thread().name))
            return index

        return job

    def grant(index: int) -> tuple[int, bool]:
        done = store.db.grouped(saving(index))
        return done, secret_hash(made[index][1][0].value) in _stored(path)

    async def main() -> list:
        return await asyncio.gather(*(run_sync(grant, i) for i in range(len(made))))

    result = _queued_then_committed(committer, main, len(made))
    assert result == [[(i, True) for i in range(len(made))]]
    assert len({id(conn) for conn, _ in seen}) == 1  # one transaction
    assert {name for _, name in seen} == {"group-commit_0"}


def test_on_postgresql_only_inserts_share_a_commit():
    """PostgreSQL: client_credentials' new rows (grouped_inserts of prebuilt Inserts) awaited
    together on the event loop are committed together (storage/loop_inserts.py); a job that
    may lock existing rows (grouped: a rotation, a code's redemption) keeps a transaction of
    its own, so no two replicas' batches can wait on each other's row locks. Which
    transaction inserted each token is PostgreSQL's own record of it (xmin)."""
    with new_postgres_database("grouped") as url:
        store = Store(url)
        made = [_family() for _ in range(6)]

        def grant(index: int) -> None:
            if index < 4:
                store.db.grouped_inserts(family_inserts(*made[index]))
            else:
                store.db.grouped(lambda conn: insert_family(conn, *made[index]))

        async def main() -> None:
            async with store.db.async_reads():
                await asyncio.gather(*(run_sync(grant, i) for i in range(len(made))))

        asyncio.run(main())
        with store.db.engine.connect() as conn:
            inserted_by = dict(
                conn.execute(text("SELECT token_hash, xmin::text FROM tokens")).all()
            )
        store.db.engine.dispose()
    transactions = [inserted_by[secret_hash(issued[0].value)] for _, issued in made]
    assert len(set(transactions[:4])) == 1  # the inserts: one transaction
    assert len(set(transactions)) == 3  # each locking job: one of its own


def test_an_awaited_job_that_fails_fails_only_its_own_request(tmp_path):
    path = f"{tmp_path}/fail.db"
    store = Store(f"sqlite:///{path}")
    committer = store.db._group
    made = [_family() for _ in range(3)]

    def job(index: int):
        def run(conn) -> str:
            insert_family(conn, *made[index])
            if index == 1:
                raise ValueError("this request's job fails")
            return "stored"

        return run

    def grant(index: int) -> str:
        try:
            return store.db.grouped(job(index))
        except ValueError as exc:
            return f"raised: {exc}"

    async def main() -> list:
        return await asyncio.gather(*(run_sync(grant, i) for i in range(3)))

    result = _queued_then_committed(committer, main, 3)
    assert result == [["stored", "raised: this request's job fails", "stored"]]
    assert _stored(path) == {secret_hash(made[i][1][0].value) for i in (0, 2)}


def test_awaited_jobs_and_jobs_of_worker_threads_all_finish(tmp_path):
    """Both kinds of callers share one queue: whoever leads a batch (a worker thread or the
    writer thread) finishes the others' jobs, and every caller gets its own result."""
    path = f"{tmp_path}/mixed.db"
    store = Store(f"sqlite:///{path}")
    committer = store.db._group
    made = [_family() for _ in range(6)]
    thread_results: dict[int, object] = {}

    def save(index: int):
        return store.db.grouped(lambda conn: insert_family(conn, *made[index]) or index)

    async def main() -> list:
        return await asyncio.gather(*(run_sync(save, i) for i in range(3)))

    workers = [
        threading.Thread(target=lambda i=i: thread_results.update({i: save(i)}), daemon=True)
        for i in range(3, 6)
    ]
    with committer._leader:
        loop_thread, result = _run_loop_in_thread(main)
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 30
        while len(committer._queue) < 6:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    for thread in (loop_thread, *workers):
        thread.join(30)
    assert result == [[0, 1, 2]] and thread_results == {3: 3, 4: 4, 5: 5}
    assert _stored(path) == {secret_hash(issued[0].value) for _, issued in made}


def test_a_request_cancelled_while_it_waits_still_commits_and_breaks_nothing(tmp_path):
    """A cancelled request (its client went away) cannot take back a queued write: the job
    commits, and the committer goes on serving the next ones."""
    path = f"{tmp_path}/cancel.db"
    store = Store(f"sqlite:///{path}")
    committer = store.db._group
    first, second = _family(), _family()

    async def main() -> str:
        waiting = asyncio.ensure_future(
            run_sync(store.db.grouped, lambda conn: insert_family(conn, *first))
        )
        while not committer._queue:
            await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        committer._leader.release()  # the commit under way ends
        await run_sync(store.db.grouped, lambda conn: insert_family(conn, *second))
        return "served"

    committer._leader.acquire()
    assert asyncio.run(main()) == "served"
    assert _stored(path) == {secret_hash(first[1][0].value), secret_hash(second[1][0].value)}


# -- the provider's token endpoint ---------------------------------------------------------------


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("MCP_RS_CLIENT_SECRET", RS_SECRET)
    settings = oauth_provider.parse_settings(
        ["--database-url", f"sqlite:///{tmp_path}/oauth.db", "--issuer", "http://localhost"]
    )
    with TestClient(oauth_provider.build_app(settings), "http://localhost") as client:
        yield client


def test_client_credentials_runs_on_the_event_loop_and_the_device_grant_in_a_thread(
    app, monkeypatch
):
    """Which storage calls the token endpoint makes where: client_credentials awaits its
    grouped commit on the event loop; the device grant (its poll is a write transaction of
    its own) stays in a worker thread."""
    calls: list[tuple[str, bool]] = []
    grouped, write = Database.grouped_inserts, Database.write

    def recording_grouped(self, job):
        calls.append(("grouped", on_event_loop()))
        return grouped(self, job)

    def recording_write(self):
        calls.append(("write", on_event_loop()))
        return write(self)

    monkeypatch.setattr(Database, "grouped_inserts", recording_grouped)
    monkeypatch.setattr(Database, "write", recording_write)
    auth = ("mcp-resource-server", RS_SECRET)
    answer = app.post("/token", data={"grant_type": "client_credentials"}, auth=auth)
    assert answer.status_code == 200, answer.text
    assert calls == [("grouped", True)]

    device = app.post("/device_authorization", data={"client_id": "mcp-client"})
    assert device.status_code == 200, device.text
    calls.clear()
    polled = app.post(
        "/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": device.json()["device_code"],
            "client_id": "mcp-client",
        },
    )
    assert polled.json()["error"] == "authorization_pending"
    assert calls and all(not on_loop for _, on_loop in calls)
