"""Immediate wake-ups of waiting event polls, whichever replica appended the event.

In one process the doorbell rings when an appending transaction commits (security_events.py).
On PostgreSQL the appending transaction also sends NOTIFY, which the database delivers at
commit to every replica LISTENing: each replica keeps one connection listening and rings its
own doorbell. After a lost connection it rings once on reconnecting (a NOTIFY may have been
missed meanwhile); polls also look at the log every few seconds whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from mcp_oauth.common.sql import libpq_url
from mcp_oauth.provider.storage.security_events import NOTIFY_CHANNEL, Doorbell

log = logging.getLogger("oauth_provider")


class EventWakeups:
    def __init__(self, database_url: str, doorbell: Doorbell):
        self.database_url = database_url
        self.doorbell = doorbell

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
        """Listening while the app serves (PostgreSQL only; SQLite needs only the doorbell)."""
        task = None
        if self.database_url.startswith("postgresql"):
            task = asyncio.create_task(self._listen())
        try:
            yield
        finally:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
