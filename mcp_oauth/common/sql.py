"""The SQL engine both servers store through (SQLAlchemy 2): SQLite in WAL mode by default,
PostgreSQL for several replicas of the provider.

Writers on SQLite ask for their transaction with the execution option `write=True`: they take
the write lock up front (BEGIN IMMEDIATE); everything else runs as single autocommit reads."""

import select
from typing import Any

from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # Every COMMIT waits for the WAL to reach the disk (fsync): a token, rotation or revocation
    # answered is never lost, not even on power loss (NORMAL would keep it across a crash of
    # the process only). PostgreSQL's default (synchronous_commit=on) promises the same.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # A writer takes the write lock up front (BEGIN IMMEDIATE) so it waits its turn under
    # busy_timeout instead of failing with "database is locked" when upgrading a read lock.
    # Reads are single statements and run without a transaction (autocommit).
    if conn.get_execution_options().get("write", False):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def ended_while_idle(connection: Any) -> bool:
    """Whether the server ended this idle PostgreSQL connection (a restart, an administrator's
    pg_terminate_backend): an idle connection has nothing to read unless the server sent its
    last message or closed the stream. One poll of its socket, where a query (SQLAlchemy's
    `pool_pre_ping`) paid a round trip: 118 µs of CPU per write transaction measured here."""
    ready = select.poll()
    ready.register(connection.fileno(), select.POLLIN)
    return bool(ready.poll(0))


def _drop_if_ended(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection the server ended while idle is replaced before use (a checkout
    handler's DisconnectionError makes SQLAlchemy replace it)."""
    if ended_while_idle(dbapi_connection):
        raise DisconnectionError("PostgreSQL ended this connection while it was idle")


def create_storage_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, pool_size=16, max_overflow=16)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(url, pool_size=16, max_overflow=16)
    event.listen(engine, "checkout", _drop_if_ended)
    return engine


def libpq_url(url: str) -> str:
    """The libpq connection URL (for psycopg itself) of a `postgresql+psycopg://` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
