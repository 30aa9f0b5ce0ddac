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

A grant on the event loop (sync_on_loop.py) awaits its job instead (`run_async`): the job is
queued with a future, and the jobs queued in this turn of the loop and the next are committed as
one batch. The event loop commits that batch itself (`write_now`, Database.write_now), two turns
after the first job was queued, if it can at once: no other thread of the process leads a batch,
SQLite's write lock is free (no waiting for it), and every job succeeds. A writer thread
committing instead had to take the GIL back from the busy event loop after each of SQLite's
steps: measured under client_credentials load, an 8-row INSERT took 1.0 ms there against 0.18 ms
of its own CPU; committed on the loop, rotating refreshes went from 1,206-1,235 to 1,700-1,898 a
second in an interleaved A/B. The loop then waits for the batch's fsync (a fraction of a
millisecond for the whole batch) but never for a lock. Otherwise (the lock is taken, a job
raised, a loop outside the main thread) the batch goes to a writer thread of the committer's
own, which leads batches while the queue holds jobs and resolves each batch's futures on their
event loop in one call once it committed.

Why two turns: a request read from its socket in one turn starts its task (asyncio's
create_task) only in a later one, so a commit one turn after the first job leaves behind the
requests that arrived while the last batch committed (the loop is busy for its fsync). Waiting
one more turn lets them join: over HTTP at 16 connections, 5.4 -> 8.1 tokens a commit and
client_credentials on SQLite 0.200 -> 0.169 ms of CPU a token (0.54x -> 0.62x of oidc-provider
in an interleaved A/B); a third turn made batches of 10 for the same CPU. An idle loop's turn
takes microseconds, so a lone request hardly waits longer.

A batch of jobs that only insert rows (prebuilt.Inserts: client_credentials' family and token)
runs as one executemany per statement (`together`: prebuilt.run_together); if it fails, each
job runs alone, as above. (PostgreSQL has no group committer: there only such inserts share a
transaction, committed from the event loop by loop_inserts.py; Database.grouped.)
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy.engine import Connection

MAX_BATCH = 64  # jobs per transaction; the rest go in the next one
Work = Callable[[Connection], Any]


class _Job:
    __slots__ = ("work", "finished", "ok", "value", "future")

    def __init__(self, work: Work, future: asyncio.Future | None = None):
        self.work = work
        self.finished = False
        self.ok = False
        self.value: Any = None
        self.future = future  # run_async's: resolved on its event loop once finished


class _Rerun(Exception):
    """A job of the batch raised: roll the batch back and run its jobs one by one."""


class WriteLockTaken(Exception):
    """`write_now` could not start its transaction at once: another connection holds the
    write lock. The batch goes to the writer thread, which waits for the lock."""


class GroupCommitter:
    def __init__(
        self,
        write: Callable[[], AbstractContextManager[Connection]],
        together: Callable[[Connection, list[Work]], list[Any]],
        write_now: Callable[[], AbstractContextManager[Connection]],
    ):
        self._write = write  # Database.write: the transaction a batch runs in
        # a batch's jobs run in its transaction, their results in order (prebuilt.run_together)
        self._together = together
        # Database.write_now: the event loop's transaction, or WriteLockTaken
        self._write_now = write_now
        self._queue: deque[_Job] = deque()
        self._leader = threading.Lock()
        self._writer = ThreadPoolExecutor(1, "group-commit")  # leads for run_async's jobs
        self._writing = False  # a _drain is running or submitted (guarded by _writing_lock)
        self._writing_lock = threading.Lock()

    def run(self, work: Work) -> Any:
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

    async def run_async(self, work: Work) -> Any:
        """`run` for the event loop: awaits the commit instead of blocking for it."""
        loop = asyncio.get_running_loop()
        job = _Job(work, loop.create_future())
        self._queue.append(job)
        with self._writing_lock:
            if not self._writing:
                self._writing = True
                if threading.current_thread() is threading.main_thread():
                    # after the requests of this turn and the next (the docstring: why)
                    loop.call_soon(loop.call_soon, self._lead_on_loop)
                else:
                    self._writer.submit(self._drain)
        return await job.future

    def _lead_on_loop(self) -> None:
        """The event loop commits the queued batch itself if it can without waiting (see
        the module's docstring); otherwise, or for what is queued after it, the writer
        thread leads. (A job raising SystemExit or the like stops the event loop.)"""
        try:
            if self._leader.acquire(blocking=False):
                try:
                    batch = list(self._take())  # empty if a worker thread's batch took them
                    if batch and not self._committed_on_loop(batch):
                        self._queue.extendleft(reversed(batch))  # first in line, in order
                    else:
                        _resolve_futures(batch)
                finally:
                    self._leader.release()
        finally:
            with self._writing_lock:
                if self._queue:
                    self._writer.submit(self._drain)  # still leading: _writing stays True
                else:
                    self._writing = False

    def _committed_on_loop(self, batch: list[_Job]) -> bool:
        """Whether the batch committed in the event loop's transaction, every job with its
        result; if not, nothing of it committed and its jobs are not finished."""
        try:
            with self._write_now() as conn:
                results = self._together(conn, [job.work for job in batch])
        except Exception:  # the lock was taken or a job raised: rolled back
            return False
        for job, result in zip(batch, results, strict=True):
            self._finish(job, True, result)
        return True

    def _drain(self) -> None:
        """The writer thread: batches until the queue is empty. A job queued after the last
        look finds _writing False and submits a new drain, so none is left waiting."""
        try:
            while True:
                with self._leader:
                    while self._queue:
                        self._commit(list(self._take()))
                with self._writing_lock:
                    if not self._queue:
                        self._writing = False
                        return
        except BaseException:
            with self._writing_lock:
                self._writing = False
            raise

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
        finally:
            _resolve_futures(batch)

    def _commit_batch(self, batch: list[_Job]) -> None:
        try:
            with self._write() as conn:
                try:
                    results = self._together(conn, [job.work for job in batch])
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


def _resolve_futures(batch: list[_Job]) -> None:
    """Hand the finished run_async jobs of a batch to their event loops, one call per loop;
    those of the loop running here (the batch was committed on it), at once."""
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:  # a writer or worker thread
        here = None
    waiting: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
    for job in batch:
        if job.future is not None:
            waiting.setdefault(job.future.get_loop(), []).append(job)
    for loop, jobs in waiting.items():
        if loop is here:
            _set_results(jobs)
            continue
        try:
            loop.call_soon_threadsafe(_set_results, jobs)
        except RuntimeError:  # that loop is closed: nobody waits any more
            pass


def _set_results(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.future.done():  # cancelled while it waited; the job committed all the same
            continue
        if job.ok:
            job.future.set_result(job.value)
        else:
            job.future.set_exception(job.value)
