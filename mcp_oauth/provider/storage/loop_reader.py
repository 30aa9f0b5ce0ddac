"""SQLite reads with each statement compiled once, on a driver connection (no SQLAlchemy
Connection): on the event loop's own connection, and in worker threads on a pooled one.

An indexed SQLite read takes microseconds; going through a pooled SQLAlchemy Connection
(checkout, execution context, result processing, reset on return) costs several times that
(about 220 µs against 30 µs measured here). The event loop's thread keeps one driver
connection for itself (the pool's connection setup applied: WAL, autocommit); worker threads
check a driver connection out of the pool for the one statement and give it back. Every
statement runs in autocommit and its cursor is closed at once, so each read sees what was
committed before it (a revocation committed by a worker thread included) and no read
transaction stays open.

Microseconds in the usual case; but SQLite can answer BUSY to a reader (WAL recovery after a
killed process, a rollback-journal file system, another process's exclusive lock), and the
pool's busy_timeout of 10 s would then put the whole event loop to sleep in SQLite's busy
handler. The loop's connection waits at most LOOP_BUSY_TIMEOUT_MS and then raises
DatabaseBusy, which the endpoints answer 503 temporarily_unavailable; a worker thread's read
waits the pool's busy_timeout, then raises DatabaseBusy too.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.sql import Executable

from mcp_oauth.provider.storage.prebuilt import bound, compiled

LOOP_BUSY_TIMEOUT_MS = 50  # the longest the event loop sleeps in SQLite's busy handler


class DatabaseBusy(Exception):
    """SQLite stayed busy or locked past LOOP_BUSY_TIMEOUT_MS: try again shortly."""


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): another connection holds a lock."""
    return getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


class LoopReader:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._connection: Any = None  # the pool's, kept by the event loop's thread
        self._columns: dict[str, list[str]] = {}  # each statement's column names, read once

    @staticmethod
    def applies() -> bool:
        """Only the main thread, where uvicorn runs the event loop, uses the kept connection."""
        return threading.current_thread() is threading.main_thread()

    def first(self, statement: Executable, params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of `statement` with `params` bound, as a dict by column name, read
        on the event loop's kept connection."""
        if self._connection is None:
            self._connection = self._kept_connection()
        return self._first_on(self._connection, statement, params)

    def first_pooled(self, statement: Executable, params: dict[str, Any]) -> dict[str, Any] | None:
        """`first` for any other thread: on a driver connection checked out of the pool for
        this one statement."""
        connection = self._engine.raw_connection()
        try:
            return self._first_on(connection, statement, params)
        finally:
            connection.close()  # back to the pool

    def _first_on(self, connection: Any, statement: Executable, params: dict[str, Any]):
        sql, names = compiled(statement, self._engine.dialect)
        cursor = connection.cursor()
        try:
            row = cursor.execute(sql, bound(names, params)).fetchone()
            columns = self._columns.get(sql)
            if columns is None:
                columns = self._columns[sql] = [column[0] for column in cursor.description or ()]
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise DatabaseBusy(str(exc)) from exc
            raise
        finally:
            cursor.close()  # resets the statement: no read transaction left open
        return None if row is None else dict(zip(columns, row, strict=True))

    def _kept_connection(self) -> Any:
        """The pool's connection, its busy wait cut to what the event loop can afford (it is
        never returned to the pool, so no other user inherits the short wait)."""
        connection = self._engine.raw_connection()
        cursor = connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={LOOP_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()
        return connection
