"""Hot statements built once, compiled once, and run on the driver's own cursor.

Executing through a SQLAlchemy Connection costs about 100-200 µs a statement here (execution
context, events, result set-up), several times what SQLite then takes to run an indexed
INSERT or UPDATE; in the group committer's thread that cost was paid with the GIL held, so it
slowed the event loop too. The hot reads (loop_reader.py, async_reader.py) and the hot
writes of the grants (tokens.py, codes.py, refresh_replies.py) therefore compile their
prebuilt statements once and run them with the driver's cursor: inside the caller's
SQLAlchemy transaction for writes (the same connection, so the same transaction).

Only for statements whose values need no SQLAlchemy type processing (text, integers, NULL)
and whose tables give the omitted columns no Python-side default.

A write that only inserts new rows is an `Inserts`: the group committer's batch of such
writes runs as one executemany per statement (`run_together`) instead of a statement per row.
Measured on PostgreSQL, where a batch of client_credentials tokens (about six) spent 540 µs of
CPU running its twelve INSERTs one by one in the committer's thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

# (statement, dialect, inserted columns) -> (SQL, parameter names in order, or None if named)
_compiled: dict[tuple[Executable, str, tuple[str, ...] | None], tuple[str, tuple | None]] = {}


def compiled(
    statement: Executable, dialect: Dialect, columns: tuple[str, ...] | None = None
) -> tuple[str, tuple[str, ...] | None]:
    """The SQL of `statement` for `dialect` and the names of its positional parameters in
    order (None where the driver takes them by name, as psycopg). An INSERT is compiled
    for the `columns` its rows give."""
    key = (statement, dialect.name, columns)
    found = _compiled.get(key)
    if found is None:
        done = statement.compile(dialect=dialect, column_keys=list(columns or ()) or None)
        names = tuple(done.positiontup or ()) if done.positional else None
        found = _compiled[key] = (done.string, names)
    return found


@functools.cache
def _in_order(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple]:
    """What takes a statement's parameters from a dict in `names`' order (made once)."""
    take = itemgetter(*names) if names else lambda params: ()
    return take if len(names) != 1 else lambda params: (take(params),)


def bound(names: tuple[str, ...] | None, params: dict[str, Any]) -> Any:
    """The parameters as the driver takes them: a tuple in order, or the dict itself."""
    return params if names is None else _in_order(names)(params)


class Inserts:
    """A write that only inserts new rows: (statement, rows) steps, run in order. Writes of
    this kind that share statements list them in the same order (a parent's rows first)."""

    __slots__ = ("steps",)

    def __init__(self, *steps: tuple[Executable, list[dict[str, Any]]]):
        self.steps = steps

    def __call__(self, conn: Connection) -> None:
        for statement, rows in self.steps:
            execute(conn, statement, rows)


def run_together(conn: Connection, works: list[Callable[[Connection], Any]]) -> list[Any]:
    """The results of a batch's writes in one transaction, in order: when every one is an
    `Inserts`, their rows go in one executemany per statement (statements in the order first
    listed); otherwise each write runs in turn."""
    if len(works) < 2 or not all(isinstance(work, Inserts) for work in works):
        return [work(conn) for work in works]
    for statement, rows in joined_rows(works).items():
        execute(conn, statement, rows)
    return [None] * len(works)


def joined_rows(works: Iterable[Inserts]) -> dict[Executable, list[dict[str, Any]]]:
    """The rows of several Inserts by statement, statements in the order first listed (a
    family's row before its tokens'), to run as one executemany each."""
    joined: dict[Executable, list[dict[str, Any]]] = {}
    for work in works:
        for statement, rows in work.steps:
            joined.setdefault(statement, []).extend(rows)
    return joined


def execute(conn: Connection, statement: Executable, params: dict | list[dict]) -> int:
    """Run a prebuilt INSERT, UPDATE or DELETE inside `conn`'s transaction, with one set of
    parameters or (an INSERT) a list of rows; the number of rows it matched."""
    rows = params if isinstance(params, list) else [params]
    columns = tuple(rows[0]) if statement.is_insert else None
    sql, names = compiled(statement, conn.dialect, columns)
    driver = conn.dialect.loaded_dbapi
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        if len(rows) == 1:
            cursor.execute(sql, bound(names, rows[0]))
        else:
            cursor.executemany(sql, [bound(names, row) for row in rows])
        return cursor.rowcount
    except driver.Error as exc:  # as SQLAlchemy would raise it (OperationalError, ...)
        raise DBAPIError.instance(sql, rows, exc, driver.Error, True, dialect=conn.dialect) from exc
    finally:
        cursor.close()
