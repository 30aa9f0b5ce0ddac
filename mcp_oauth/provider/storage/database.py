"""The provider's database connection: one write transaction at a time per SQLite file, an
atomic upsert for both dialects, and the server secrets every replica shares."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import Table, insert, inspect, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from mcp_oauth.common.sql import create_storage_engine
from mcp_oauth.provider.storage.group_commit import GroupCommitter, WriteLockTaken
from mcp_oauth.provider.storage.loop_reader import LoopReader, is_busy
from mcp_oauth.provider.storage.prebuilt import Inserts, run_together
from mcp_oauth.provider.storage.schema import metadata, server_secrets
from mcp_oauth.provider.sync_on_loop import off_loop, on_event_loop, wait_for

log = logging.getLogger(__name__)
Record = TypeVar("Record")
AFTER_COMMIT = "mcp_oauth_after_commit"


def now() -> int:
    return int(time.time())


@functools.cache
def field_names(record_type: type) -> tuple[str, ...]:
    """A record dataclass's field names, looked up once per type (not per row read)."""
    return tuple(field.name for field in dataclasses.fields(record_type))


@functools.cache
def _field_values(
    record_type: type, renamed: tuple[tuple[str, str], ...]
) -> Callable[[Any], tuple]:
    """What takes a row's values in the order of `record_type`'s fields (made once)."""
    columns = dict(renamed)
    take = itemgetter(*(columns.get(name, name) for name in field_names(record_type)))
    return take if len(field_names(record_type)) > 1 else lambda row: (take(row),)


def record_from_row(record_type: type[Record], row: Any, **columns: str) -> Record:
    """A record dataclass from a table row: each field from the column of its name, or from
    the column `columns` names for it (where the table's name predates the code's word)."""
    values = getattr(row, "_mapping", row)  # a Row, or a mapping from Database.read_first
    return record_type(*_field_values(record_type, tuple(columns.items()))(values))


def columns_from_record(record: Any, **columns: str) -> dict[str, Any]:
    """The column values of a record dataclass (its fields hold plain values: text, numbers,
    None), the inverse of `record_from_row`."""
    return {columns.get(name, name): getattr(record, name) for name in field_names(type(record))}


def add_missing_columns(conn: Connection) -> None:
    """A database made by an older version lacks the nullable columns added since (create_all
    makes only missing tables): add them, empty."""
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspect(conn).get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.nullable:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def run_after_commit(callback: Callable[[], None]) -> None:
    """A callback of a committed transaction: its failure is logged, never reported as the
    transaction's (a caller told "failed" after COMMIT would, for a rotation, lose a spent
    refresh token's answer)."""
    try:
        callback()
    except Exception:
        log.exception("after-commit callback failed; the transaction is committed")


class Database:
    """The engine, its write transactions and the tables, created once."""

    def __init__(self, url: str):
        self.engine = create_storage_engine(url)
        # SQLite has one write lock per database: writers of this process queue here rather
        # than in SQLite's busy handler, which sleeps between retries. (Other processes are
        # still kept out by SQLite itself.) PostgreSQL locks rows, so it needs no such queue.
        sqlite = self.engine.dialect.name == "sqlite"
        self._sqlite_writer = threading.Lock() if sqlite else None
        # SQLite: short indexed reads are microseconds, cheaper than a hop to a worker thread,
        # so the hot endpoints run them on the event loop; PostgreSQL reads cross the network,
        # so the hot endpoints await them on the event loop (read_by_key_async).
        self.reads_inline = sqlite
        # SQLite: every grouped write shares commits (group_commit.py). PostgreSQL: only
        # writes that insert new rows and touch no existing one (grouped_inserts), which take
        # no row lock another transaction could wait for, so batches of two replicas cannot
        # deadlock; they are committed from the event loop (loop_inserts.py, below).
        self._group = GroupCommitter(self.write, run_together, self.write_now) if sqlite else None
        self._loop_writer: Connection | None = None  # write_now's, kept by the event loop
        self._loop_reader = LoopReader(self.engine) if sqlite else None
        self._async_reader = None
        if not sqlite:  # (modules that need psycopg)
            from mcp_oauth.provider.storage.async_reader import AsyncReader
            from mcp_oauth.provider.storage.loop_inserts import LoopInserts

            self._async_reader = AsyncReader(self.engine, url)
            self._loop_inserts = LoopInserts(self._async_reader, self.engine.dialect)
        with self.write() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas starting together on an empty database: one creates the tables.
                # (On SQLite the write transaction itself serializes them.)
                conn.execute(text("SELECT pg_advisory_xact_lock(7262001)"))
            metadata.create_all(conn)
            add_missing_columns(conn)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction: committed on success, rolled back on error. What the
        transaction asked for with `after_commit` runs once it committed."""
        if on_event_loop():
            raise RuntimeError("a write transaction would block the event loop: use transaction")
        with self._sqlite_writer or nullcontext(), self.engine.connect() as conn:
            conn.execution_options(write=True)
            with self._committed(conn):
                yield conn

    @contextmanager
    def write_now(self) -> Iterator[Connection]:
        """SQLite: a write transaction for the event loop itself, which must never wait for
        a lock: it starts only if no other thread of this process writes and SQLite's write
        lock is free at once, and raises WriteLockTaken otherwise (the group committer then
        hands the batch to its writer thread). On a connection the loop keeps, so its pages
        stay cached from one batch to the next."""
        if not self._sqlite_writer.acquire(blocking=False):
            raise WriteLockTaken("another thread of this process is writing")
        try:
            if self._loop_writer is None:
                self._loop_writer = self.engine.connect()
                # no waiting in SQLite's busy handler: BEGIN IMMEDIATE fails at once if taken
                self._loop_writer.connection.driver_connection.execute("PRAGMA busy_timeout=0")
            conn = self._loop_writer
            with self._committed(conn):
                try:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                except OperationalError as exc:
                    if is_busy(exc.orig):
                        raise WriteLockTaken("another process is writing") from exc
                    raise
                yield conn
        finally:
            self._sqlite_writer.release()

    @staticmethod
    @contextmanager
    def _committed(conn: Connection) -> Iterator[Connection]:
        """`conn`'s transaction: committed on success, rolled back on error; what the
        transaction asked for with `after_commit` runs once it committed."""
        conn.info.pop(AFTER_COMMIT, None)  # the connection's, from a rollback
        with conn.begin():
            yield conn
        for callback in conn.info.pop(AFTER_COMMIT, []):
            run_after_commit(callback)

    def read_first(self, statement, params: dict[str, Any]) -> Any:
        """The first row of a prebuilt single-statement read, by column name (a dict or a
        RowMapping), None if there is none: on SQLite through LoopReader (the event loop's own
        connection, or a pooled driver connection), on PostgreSQL through a pooled
        SQLAlchemy connection, or awaited through the async driver for a grant on the event
        loop (sync_on_loop.py)."""
        if self._loop_reader is not None:
            if self._loop_reader.applies():
                return self._loop_reader.first(statement, params)
            return self._loop_reader.first_pooled(statement, params)
        if on_event_loop():  # a grant on the event loop (sync_on_loop.py): awaited there
            return wait_for(self._async_reader.first(statement, params))
        with self.engine.connect() as conn:
            row = conn.execute(statement, params).first()
        return None if row is None else row._mapping

    async def read_by_key_async(self, statement, batch, column: str, key: Any) -> Any:
        """The row `statement` reads with {column: key}, for a coroutine on the event loop:
        on SQLite read_first itself; on PostgreSQL awaited through psycopg's async driver,
        `batch` (WHERE column = ANY(:keys)) answering in one query the reads of other keys
        asked for meanwhile (AsyncReader.first_by_key)."""
        if self._async_reader is None:
            return self.read_first(statement, {column: key})
        return await self._async_reader.first_by_key(statement, batch, column, key)

    @asynccontextmanager
    async def async_reads(self) -> AsyncIterator[None]:
        """While the app serves: the async reads' connections are closed when it stops."""
        try:
            yield
        finally:
            if self._async_reader is not None:
                await self._async_reader.close()

    def grouped(self, job: Callable[[Connection], Record]) -> Record:
        """`job(conn)` in a committed write transaction, returning its result: on SQLite one
        shared with the other writes waiting meanwhile (group_commit.py); on PostgreSQL a
        transaction of its own (its row locks must not be held together with another job's).
        Only for jobs that are correct whatever else commits with them (they decide single
        use by their own UPDATEs). A job must not catch database errors: SQLite rolls the
        whole shared transaction back on some (SQLITE_FULL, IOERR, NOMEM, BUSY), and the jobs
        after it would then run outside any transaction."""
        if self._group is None:
            return self.transaction(job)
        return self._in_group(job)

    def grouped_inserts(self, job: Callable[[Connection], Record]) -> Record:
        """`grouped` for a job that only inserts new rows (it reads, updates and locks none
        that exist): shared commits on PostgreSQL too, where such batches hold no lock that
        another transaction could wait for. There a job of prebuilt Inserts awaited on the
        event loop (client_credentials) is committed from the loop with the others queued
        meanwhile (loop_inserts.py); any other, in a transaction of its own."""
        if self._group is not None:
            return self._in_group(job)
        if on_event_loop() and isinstance(job, Inserts):
            return wait_for(self._loop_inserts.run(job))
        return self.transaction(job)

    def _in_group(self, job: Callable[[Connection], Record]) -> Record:
        if on_event_loop():  # a grant on the event loop: the commit is awaited there
            return wait_for(self._group.run_async(job))
        return self._group.run(job)

    def transaction(self, job: Callable[[Connection], Record]) -> Record:
        """`job(conn)` in a write transaction of its own, returning its result once committed;
        called on the event loop (sync_on_loop.py), in a worker thread."""
        return off_loop(self._in_transaction, job)

    def _in_transaction(self, job: Callable[[Connection], Record]) -> Record:
        with self.write() as conn:
            return job(conn)

    @staticmethod
    def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
        """Run `callback` once the write transaction of `conn` committed (never on rollback)."""
        callbacks = conn.info.setdefault(AFTER_COMMIT, [])
        if callback not in callbacks:
            callbacks.append(callback)

    @staticmethod
    def upsert(conn: Connection, table: Table, row: dict, on_conflict: dict) -> None:
        """INSERT row, or apply on_conflict to the row with its primary key, atomically (two
        replicas writing the same key at once must not fail)."""
        insert_for = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            insert_for(table)
            .values(**row)
            .on_conflict_do_update(index_elements=list(table.primary_key.columns), set_=on_conflict)
        )

    def server_secret(self, name: str, create: Callable[[], str]) -> str:
        """The named secret, created once and shared by every replica and restart."""
        query = select(server_secrets.c.value).where(server_secrets.c.name == name)
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar()
        if value is not None:
            return value
        try:
            with self.write() as conn:
                conn.execute(insert(server_secrets).values(name=name, value=create()))
        except IntegrityError:
            pass  # another replica created it first; use theirs
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()
