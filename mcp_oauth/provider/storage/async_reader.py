"""PostgreSQL reads on the event loop: psycopg's async driver and a few connections of its own
(which also commit the event loop's batches of new rows: `insert`, for loop_inserts.py).

A read through the SQLAlchemy pool runs in a worker thread: the hop there and back, and the
GIL hand-offs between the event loop and the threads, cost more than the indexed read itself
and set the pace of every introspection. Here the hot reads (prebuilt statements, compiled
once, prepared on the server) are awaited on the event loop, so other requests go on while
PostgreSQL answers.

The hottest read, a token by its hash (every introspection), is also batched (`first_by_key`):
the reads asked for in this turn of the event loop and the next, or while POOL_SIZE queries are
in flight, are answered together by the next query, `= ANY(:keys)`. (The next turn too: a
request read from its socket starts its task only in a later turn, as for the group commit's
batches; waiting that turn took an introspection on PostgreSQL from 0.125 to 0.111 ms of CPU
over HTTP, interleaved with the commit before.) Under load that is one statement's Python cost
(psycopg's execute, the pool, the waits: most of an introspection's CPU on PostgreSQL, profiled)
shared by every request that arrived meanwhile; alone, a read is one query, as before.

The connections are kept here, not in psycopg_pool's pool: at most POOL_SIZE, each running
one query at a time, idle ones reused last in first out. The pool's checkout and return
(its locks, its checks, an `open()` awaited per query) cost a third of a query's CPU beside
psycopg's execute: 115 against 83 µs, and introspection on PostgreSQL went from 0.95x to
1.01x of oidc-provider in an interleaved A/B over HTTP. A connection whose query failed or was
cut off is closed, never reused. After a connection error the idle connections are dropped
(a server restart ended them all) and the read is tried once more on a new one; a read that
cannot be answered within READ_TIMEOUT_SECONDS (PostgreSQL down or overloaded) raises
DatabaseBusy, which the endpoints answer 503 temporarily_unavailable, never 401.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Executable

from mcp_oauth.common.sql import ended_while_idle, libpq_url
from mcp_oauth.provider.storage.loop_reader import DatabaseBusy
from mcp_oauth.provider.storage.prebuilt import compiled

READ_TIMEOUT_SECONDS = 2.0  # the longest an introspection waits for PostgreSQL
WRITE_TIMEOUT_SECONDS = 5.0  # the longest a batch of new rows waits for its commit
POOL_SIZE = 4  # connections per process: PostgreSQL answers these reads in well under a millisecond
APPLICATION_NAME = "mcp-oauth event-loop reads"  # how these connections show in pg_stat_activity


Fetch = Callable[[AsyncCursor], Awaitable[Any]]
Rows = dict[str, list]  # an INSERT's SQL -> the parameters of each of its rows


@dataclass
class KeyedReads:
    """The reads of one batch statement waiting for a query (futures by key), and the tasks
    querying for them."""

    waiting: dict[Any, list[asyncio.Future]] = field(default_factory=dict)
    answering: set[asyncio.Task] = field(default_factory=set)
    starting: bool = False  # a task is about to take what waits: no other need start


class AsyncReader:
    def __init__(self, engine: Engine, url: str):
        self._engine = engine
        self._conninfo = libpq_url(url)
        self._slots = asyncio.Semaphore(POOL_SIZE)  # one per query running
        self._idle: list[AsyncConnection] = []  # open, no query running
        self._keyed: dict[Executable, KeyedReads] = {}

    def _sql(self, statement: Executable) -> str:
        # psycopg's %(name)s placeholders, as SQLAlchemy's psycopg dialect: params by name
        return compiled(statement, self._engine.dialect)[0]

    async def first(self, statement: Executable, params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of `statement` with `params` bound, as a dict by column name."""
        return await self._answer(self._sql(statement), params, AsyncCursor.fetchone)

    async def first_by_key(
        self, statement: Executable, batch: Executable, column: str, key: Any
    ) -> dict[str, Any] | None:
        """The row whose `column` is `key`; None if there is none. Read with `statement`
        (WHERE `column` = :`column`) when no other key is waiting, else with `batch` (WHERE
        `column` = ANY(:keys)) together with the others. Rows are shared by the readers of
        one key: read them, never change them."""
        loop = asyncio.get_running_loop()
        reads = self._keyed.get(batch) or self._keyed.setdefault(batch, KeyedReads())
        future = loop.create_future()
        reads.waiting.setdefault(key, []).append(future)
        if not reads.starting and len(reads.answering) < POOL_SIZE:
            # It asks two turns from now: the reads of this turn and the next join it.
            reads.starting = True
            task = loop.create_task(self._answer_keyed(statement, batch, column, reads))
            reads.answering.add(task)
            task.add_done_callback(reads.answering.discard)
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                return await future
        except TimeoutError as exc:
            raise DatabaseBusy("PostgreSQL did not answer in time") from exc

    async def _answer_keyed(
        self, statement: Executable, batch: Executable, column: str, reads: KeyedReads
    ) -> None:
        """One query for every key waiting, again until none is. While it is in flight the
        next reads may start another (up to POOL_SIZE at once), so a PostgreSQL slow to
        answer (busy vacuuming, say) does not hold every reader behind one query."""
        await asyncio.sleep(0)  # the reads of the next turn join the first query (above)
        reads.starting = False
        while reads.waiting:
            asked, reads.waiting = reads.waiting, {}
            try:
                rows = await self._rows_of(statement, batch, column, list(asked))
            except Exception as exc:  # DatabaseBusy, or a bug: each reader raises it
                for future in chain.from_iterable(asked.values()):
                    if not future.done():
                        future.set_exception(exc)
                continue
            found = {row[column]: row for row in rows}
            for key, futures in asked.items():
                for future in futures:
                    if not future.done():  # (done: cancelled by a reader that stopped waiting)
                        future.set_result(found.get(key))

    async def _rows_of(
        self, statement: Executable, batch: Executable, column: str, keys: list
    ) -> list[dict[str, Any]]:
        """The rows of `keys`: one key with `statement`, prepared on the server like every
        other read here; several with `batch`, planned for each execution's own keys (not
        prepared: the plan PostgreSQL keeps for a prepared statement after five executions,
        made while the tokens table was nearly empty, scanned all of it for `= ANY`, and
        introspection slowed from 0.1 ms to 3-5 ms a query as client_credentials filled it)."""
        if len(keys) == 1:
            row = await self._answer(self._sql(statement), {column: keys[0]}, AsyncCursor.fetchone)
            return [] if row is None else [row]
        return await self._answer(
            self._sql(batch), {"keys": keys}, AsyncCursor.fetchall, prepare=False
        )

    async def _answer(
        self, sql: str, params: dict[str, Any], fetch: Fetch, prepare: bool | None = None
    ) -> Any:
        """`fetch` of `sql` run with `params` (`prepare` as psycopg's: None, by the
        connection's threshold); DatabaseBusy if PostgreSQL cannot answer."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                try:
                    return await self._read(sql, params, fetch, prepare)
                except psycopg.OperationalError:  # e.g. connections a server restart ended
                    await self._close_idle()
                    return await self._read(sql, params, fetch, prepare)  # on a new one
        except (psycopg.OperationalError, TimeoutError) as exc:
            raise DatabaseBusy(f"PostgreSQL did not answer: {exc!r}") from exc

    async def _read(
        self, sql: str, params: dict[str, Any], fetch: Fetch, prepare: bool | None
    ) -> Any:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                result = await fetch(await conn.execute(sql, params, prepare=prepare))
            except BaseException:  # failed or cut off: its state is unknown
                await conn.close()
                raise
            self._idle.append(conn)
            return result

    async def insert(self, rows: Rows) -> None:
        """`rows` inserted in one transaction (loop_inserts.py), an executemany per statement,
        on a connection the server has not ended (a restart ends them all: each idle one is
        checked as the pooled ones are, common/sql.py). Not tried again after a failure, whose
        outcome may be unknown: DatabaseBusy if PostgreSQL cannot be reached or does not
        commit within WRITE_TIMEOUT_SECONDS; what the statements raised otherwise."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS), self._slots:
                conn = await self._live_connection()
                try:
                    async with conn.transaction(), conn.cursor() as cursor:
                        for sql, params in rows.items():
                            await cursor.executemany(sql, params)
                except BaseException:  # failed or cut off: its state is unknown
                    await conn.close()
                    raise
                self._idle.append(conn)
        except (psycopg.OperationalError, TimeoutError) as exc:
            raise DatabaseBusy(f"PostgreSQL did not commit: {exc!r}") from exc

    async def _live_connection(self) -> AsyncConnection:
        """An idle connection the server has not ended, or a new one."""
        while self._idle:
            conn = self._idle.pop()
            if not ended_while_idle(conn):
                return conn
            await conn.close()
        return await self._connect()

    async def _connect(self) -> AsyncConnection:
        return await AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            row_factory=dict_row,
            prepare_threshold=0,  # prepared on the server at first use
            application_name=APPLICATION_NAME,
        )

    async def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def close(self) -> None:
        await self._close_idle()
