"""PostgreSQL reads on the event loop: psycopg's async driver and a small pool of its own.

A read through the SQLAlchemy pool runs in a worker thread: the hop there and back, and the
GIL hand-offs between the event loop and the threads, cost more than the indexed read itself
and set the pace of every introspection. Here the hot reads (prebuilt statements, compiled
once, prepared on the server) are awaited on the event loop, so other requests go on while
PostgreSQL answers.

After a failed read the pool's connections are checked (those a server restart ended are
replaced) and the read is tried once more; a read that cannot be answered within
READ_TIMEOUT_SECONDS (PostgreSQL down or overloaded) raises DatabaseBusy, which the endpoints
answer 503 temporarily_unavailable, never 401.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Executable

from mcp_oauth.common.sql import libpq_url
from mcp_oauth.provider.storage.loop_reader import DatabaseBusy
from mcp_oauth.provider.storage.prebuilt import compiled

READ_TIMEOUT_SECONDS = 2.0  # the longest an introspection waits for PostgreSQL
POOL_SIZE = 4  # connections per process: PostgreSQL answers these reads in well under a millisecond
APPLICATION_NAME = "mcp-oauth event-loop reads"  # how these connections show in pg_stat_activity


class AsyncReader:
    def __init__(self, engine: Engine, url: str):
        self._engine = engine
        self._conninfo = libpq_url(url)
        self._pool: AsyncConnectionPool | None = None  # opened on the event loop, at first use

    def _sql(self, statement: Executable) -> str:
        # psycopg's %(name)s placeholders, as SQLAlchemy's psycopg dialect: params by name
        return compiled(statement, self._engine.dialect)[0]

    async def first(self, statement: Executable, params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of `statement` with `params` bound, as a dict by column name."""
        sql = self._sql(statement)
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                await self._opened_pool().open()
                try:
                    return await self._read(sql, params)
                except psycopg.OperationalError:  # e.g. connections a server restart ended
                    await self._opened_pool().check()  # replace the broken ones; once more
                    return await self._read(sql, params)
        except (psycopg.OperationalError, PoolTimeout, TimeoutError) as exc:
            raise DatabaseBusy(f"PostgreSQL did not answer: {exc!r}") from exc

    async def _read(self, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
        async with self._opened_pool().connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchone()

    def _opened_pool(self) -> AsyncConnectionPool:
        """The pool, made at first use: it belongs to the event loop that first reads."""
        if self._pool is None:
            self._pool = AsyncConnectionPool(
                self._conninfo,
                min_size=1,
                max_size=POOL_SIZE,
                open=False,
                kwargs={
                    "autocommit": True,
                    "row_factory": dict_row,
                    "prepare_threshold": 0,  # prepared on the server at first use
                    "application_name": APPLICATION_NAME,
                },
            )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
