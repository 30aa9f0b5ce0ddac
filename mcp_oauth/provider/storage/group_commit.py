"""Group commit for SQLite: independent write transactions that arrive while one commits are
run together in the next transaction.

SQLite has one writer at a time, and each transaction pays BEGIN IMMEDIATE, COMMIT and the
hand-over of the write lock. Under load, writers queue for that lock anyway; here whoever
gets the lock next (the leader: one of the waiting request threads, no extra thread) runs
every queued job in one transaction and commits once. A caller returns only once the
transaction holding its job committed, so what it answers is as durable as with a
transaction of its own. Single use and rotation are still decided by the UPDATEs inside each
job: the jobs of one batch run one after the other in one transaction, so a second job
spending the same token sees the first one's UPDATE and gets nothing.

A job that raises makes the leader roll the batch back and run each of its jobs again in a
transaction of its own, so one failing request never takes the others' work with it (and an
exception reaches only the caller whose job raised it).

Only for SQLite: on PostgreSQL a batch would hold the row locks of unrelated requests
together, and two replicas' batches could deadlock; there every job keeps its own
transaction (Database.write).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy.engine import Connection

MAX_BATCH = 64  # jobs per transaction; the rest go in the next one


class _Job:
    __slots__ = ("work", "finished", "ok", "value")

    def __init__(self, work: Callable[[Connection], Any]):
        self.work = work
        self.finished = False
        self.ok = False
        self.value: Any = None


class _Rerun(Exception):
    """A job of the batch raised: roll the batch back and run its jobs one by one."""


class GroupCommitter:
    def __init__(self, write: Callable[[], AbstractContextManager[Connection]]):
        self._write = write  # Database.write: the transaction a batch runs in
        self._queue: deque[_Job] = deque()
        self._leader = threading.Lock()

    def run(self, work: Callable[[Connection], Any]) -> Any:
        """`work(conn)` in a committed transaction shared with the other jobs queued
        meanwhile: its result once that transaction committed, or what it raised."""
        job = _Job(work)
        self._queue.append(job)
        with self._leader:
            while not job.finished:  # no earlier leader took it: lead a batch of the queue
                batch = list(self._take())
                if not batch:  # taken but never finished: fail, never loop on empty commits
                    raise RuntimeError("group commit: job lost")
                self._commit(batch)
        if job.ok:
            return job.value
        raise job.value

    def _take(self) -> Iterator[_Job]:
        for _ in range(MAX_BATCH):
            try:
                yield self._queue.popleft()
            except IndexError:
                return

    def _commit(self, batch: list[_Job]) -> None:
        """Run the batch; whatever escapes (SystemExit, KeyboardInterrupt) first finishes every
        job still unfinished, so no waiting caller loops for a job nobody will finish."""
        try:
            self._commit_batch(batch)
        except BaseException as exc:
            for job in batch:
                if not job.finished:
                    self._finish(job, False, exc)
            raise

    def _commit_batch(self, batch: list[_Job]) -> None:
        try:
            with self._write() as conn:
                results = []
                for job in batch:
                    try:
                        results.append(job.work(conn))
                    except Exception as exc:
                        raise _Rerun from exc
        except _Rerun:
            for job in batch:
                self._alone(job)
            return
        except Exception as exc:  # the transaction itself failed: nothing committed
            for job in batch:
                self._finish(job, False, exc)
            return
        for job, result in zip(batch, results, strict=True):
            self._finish(job, True, result)

    def _alone(self, job: _Job) -> None:
        try:
            with self._write() as conn:
                result = job.work(conn)
        except Exception as exc:
            self._finish(job, False, exc)
        else:
            self._finish(job, True, result)

    @staticmethod
    def _finish(job: _Job, ok: bool, value: Any) -> None:
        job.ok, job.value, job.finished = ok, value, True
