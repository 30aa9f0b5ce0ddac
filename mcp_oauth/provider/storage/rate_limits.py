"""Fixed-window request counters in the database (e.g. registrations per client address), so
every replica counts against the same limit and a restart forgets nothing."""

from __future__ import annotations

from sqlalchemy import case, select

from mcp_oauth.provider.storage.database import Database, now
from mcp_oauth.provider.storage.schema import rate_limits


class RateLimits:
    def __init__(self, db: Database):
        self.db = db

    def reserve(self, key: str, limit: int, window: int) -> int:
        """Count one request for `key`, atomically; 0 if it is within `limit` per `window`
        seconds, otherwise the seconds until the window ends (the request is refused, and
        still counted, so hammering does not shorten the wait)."""
        stamp = now()
        table = rate_limits
        ended = table.c.resets_at <= stamp
        with self.db.write() as conn:
            self.db.upsert(
                conn,
                table,
                {"key": key, "attempts": 1, "resets_at": stamp + window},
                {
                    "attempts": case((ended, 1), else_=table.c.attempts + 1),
                    "resets_at": case((ended, stamp + window), else_=table.c.resets_at),
                },
            )
            row = conn.execute(select(table).where(table.c.key == key)).one()
        return 0 if row.attempts <= limit else max(1, row.resets_at - stamp)
