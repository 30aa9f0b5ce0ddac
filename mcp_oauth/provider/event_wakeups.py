"""Immediate wake-ups of waiting event polls, whichever process appended the event.

In one process the doorbell rings when an appending transaction commits (security_events.py).
Other processes on the same database (replicas, `--workers`) must be told:

- PostgreSQL: the appending transaction also sends NOTIFY, which the database delivers at
  commit to every replica LISTENing: each replica keeps one connection listening and rings its
  own doorbell. After a lost connection it rings once on reconnecting (a NOTIFY may have been
  missed meanwhile).
- SQLite has no NOTIFY, but `PRAGMA data_version` on one kept connection changes whenever
  another connection committed to the file. While at least one poll waits, the event loop reads
  it every WATCH_SECONDS (microseconds, no thread hop) and rings when it changed; with no poll
  waiting nothing runs. A ring for a commit that appended no event only makes the polls look at
  the log again.

Polls also look at the log every few seconds whatever happens (event_stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator

from sqlalchemy import make_url

from mcp_oauth.common.sql import libpq_url
from mcp_oauth.provider.storage.security_events import NOTIFY_CHANNEL, Doorbell

log = logging.getLogger("oauth_provider")

WATCH_SECONDS = 0.15  # SQLite: how often a waiting poll's process looks for others' commits


class SqliteWatch:
    """Rings `doorbell` when another connection committed to the SQLite file at `path`,
    looking only while a poll waits on it (the doorbell calls `start` when one begins)."""

    def __init__(self, path: str, doorbell: Doorbell):
        self.path, self.doorbell = path, doorbell
        self.checks = 0  # reads of data_version so far (tests: none while nobody waits)
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None  # None: unknown, so the first read rings
        self._task: asyncio.Task[None] | None = None

    @property
    def watching(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.watching:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while self.doorbell.waiting:
            self.check()
            await asyncio.sleep(WATCH_SECONDS)

    def check(self) -> None:
        """One read of data_version, ringing if it changed since the last one. The version
        kept from an earlier watch was read before any poll now waiting looked at the log,
        so a commit since then rings."""
        self.checks += 1
        try:
            if self._conn is None:  # timeout 0: never block the loop on a lock; retry later
                self._conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            cursor = self._conn.execute("PRAGMA data_version")
            try:
                version = cursor.fetchone()[0]
            finally:
                cursor.close()  # no read transaction left open
        except sqlite3.Error as exc:
            log.warning("event wake-ups: reading %s failed (%s)", self.path, exc)
            self.close()
            return
        if version != self._version:
            self._version = version
            self.doorbell.ring()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._version = None, None

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.close()


def sqlite_path(database_url: str) -> str | None:
    """The file of a SQLite URL that other processes can share (not an in-memory database)."""
    if not database_url.startswith("sqlite"):
        return None
    path = make_url(database_url).database
    return path if path and path != ":memory:" and not path.startswith("file::memory:") else None


class EventWakeups:
    def __init__(self, database_url: str, doorbell: Doorbell):
        self.database_url = database_url
        self.doorbell = doorbell
        path = sqlite_path(database_url)
        self.sqlite_watch = SqliteWatch(path, doorbell) if path else None

    async def _listen(self) -> None:
        import psycopg  # only PostgreSQL deployments need it

        pause = 1.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    libpq_url(self.database_url), autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    pause = 1.0
                    self.doorbell.ring()
                    async for _ in conn.notifies():
                        self.doorbell.ring()
            except (psycopg.Error, OSError) as exc:
                log.warning("event wake-ups: LISTEN failed (%s); retrying in %.0f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While the app serves: LISTENing on PostgreSQL; on SQLite, watching the file
        whenever a poll waits."""
        task = None
        if self.database_url.startswith("postgresql"):
            task = asyncio.create_task(self._listen())
        if self.sqlite_watch:
            self.doorbell.on_wait = self.sqlite_watch.start
        try:
            yield
        finally:
            self.doorbell.on_wait = None
            if self.sqlite_watch:
                await self.sqlite_watch.stop()
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
