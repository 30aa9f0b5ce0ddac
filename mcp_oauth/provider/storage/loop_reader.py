"""SQLite reads on the event loop's own connection, with each statement compiled once.

An indexed SQLite read takes microseconds; going through a pooled SQLAlchemy Connection
(checkout, execution context, reset on return) costs several times that. The event loop's
thread keeps one driver connection for itself (the pool's connection setup applied: WAL,
autocommit) and runs prebuilt statements on it as compiled SQL. Every statement runs in
autocommit and its cursor is closed at once, so each read sees what was committed before it
(a revocation committed by a worker thread included) and no read transaction stays open.
Other threads read through the pool as before.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.sql import Executable


class LoopReader:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._connection: Any = None  # the pool's, kept by the event loop's thread
        self._compiled: dict[Executable, tuple[str, tuple[str, ...]]] = {}

    @staticmethod
    def applies() -> bool:
        """Only the main thread, where uvicorn runs the event loop, uses the kept connection."""
        return threading.current_thread() is threading.main_thread()

    def first(self, statement: Executable, params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of `statement` with `params` bound, as a dict by column name."""
        compiled = self._compiled.get(statement)
        if compiled is None:
            done = statement.compile(dialect=self._engine.dialect)
            compiled = self._compiled[statement] = (done.string, tuple(done.positiontup or ()))
        sql, names = compiled
        if self._connection is None:
            self._connection = self._engine.raw_connection()
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql, tuple(params[name] for name in names))
            row = cursor.fetchone()
            columns = [column[0] for column in cursor.description or ()]
        finally:
            cursor.close()  # resets the statement: no read transaction left open
        return None if row is None else dict(zip(columns, row, strict=True))
