"""Group commit for SQLite: independent write transactions queued while one commits are run
together in the next transaction, each inside its own SAVEPOINT.

SQLite has one writer at a time, and each transaction pays BEGIN IMMEDIATE, COMMIT and the
hand-over of the write lock. Under load, writers queue for that lock anyway; here the queue
is drained by one committer thread, which runs every waiting job in one transaction. A job
that raises rolls back to its savepoint only (its caller gets the exception); the others
commit. A caller returns only once the transaction holding its job committed, so what it
answers is as durable as with a transaction of its own. Single use and rotation are still
decided by the UPDATEs inside each job: jobs of one batch run one after the other in one
transaction, so a second job spending the same token sees the first one's UPDATE.

Only for SQLite: on PostgreSQL a batch would hold the row locks of unrelated requests
together, and two replicas' batches could deadlock; there every job keeps its own
transaction (Database.write).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from sqlalchemy.engine import Connection

AFTER_COMMIT = "mcp_oauth_after_commit"  # Database.after_commit's key in conn.info

MAX_BATCH = 64  # jobs per transaction; the rest wait for the next one


class GroupCommitter:
    """One committer thread per database, started on first use (so after a fork too)."""

    def __init__(self, write: Callable[[], Any]):
        self._write = write  # Database.write: the transaction a batch runs in
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def run(self, job: Callable[[Connection], Any]) -> Any:
        """Run `job(conn)` in a committed transaction shared with other waiting jobs; its
        result once that transaction committed, or the exception it (or the commit) raised."""
        done: Future = Future()
        self._ensure_thread()
        self._jobs.put((job, done))
        return done.result()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="sqlite-group-commit", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = [self._jobs.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list[tuple[Callable[[Connection], Any], Future]]) -> None:
        outcomes: list[tuple[Future, bool, Any]] = []
        try:
            with self._write() as conn:
                for job, done in batch:
                    savepoint = conn.begin_nested()
                    callbacks = list(conn.info.get(AFTER_COMMIT, []))
                    try:
                        result = job(conn)
                    except BaseException as exc:  # this job only: its caller gets it
                        savepoint.rollback()
                        conn.info[AFTER_COMMIT] = callbacks  # nor its after-commit work
                        outcomes.append((done, False, exc))
                    else:
                        savepoint.commit()
                        outcomes.append((done, True, result))
        except BaseException as exc:  # the transaction itself failed: nothing committed
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for done, ok, value in outcomes:
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)
