"""Failed sign-ins per key (an account, a client address), shared by every replica, so the
sign-in page can slow down password guessing."""

from __future__ import annotations

from sqlalchemy import case, select

from mcp_oauth.provider.storage.database import Database, now
from mcp_oauth.provider.storage.schema import login_failures

LOGIN_FAILURE_WINDOW = 900  # seconds after which a failed sign-in no longer counts


class LoginThrottle:
    def __init__(self, db: Database):
        self.db = db

    def failures(self, keys: list[str]) -> list[tuple[int, int]]:
        """(failures, last_failure_at) for each key; zeros when there are none, or when the
        last one is older than LOGIN_FAILURE_WINDOW."""
        with self.db.engine.connect() as conn:
            rows = {
                row.key: (row.failures, row.last_failure_at)
                for row in conn.execute(
                    select(login_failures).where(login_failures.c.key.in_(keys))
                )
            }
        recent = now() - LOGIN_FAILURE_WINDOW
        return [rows[key] if key in rows and rows[key][1] > recent else (0, 0) for key in keys]

    def record_failure(self, keys: list[str]) -> None:
        """Count one more failure per key; a count whose last failure is older than
        LOGIN_FAILURE_WINDOW starts again from one, so old failures stop mattering."""
        stamp = now()
        table = login_failures
        restart = table.c.last_failure_at <= stamp - LOGIN_FAILURE_WINDOW
        with self.db.write() as conn:
            for key in keys:
                self.db.upsert(
                    conn,
                    table,
                    {"key": key, "failures": 1, "last_failure_at": stamp},  # the first failure
                    {
                        "failures": case((restart, 1), else_=table.c.failures + 1),
                        "last_failure_at": stamp,
                    },
                )

    def clear(self, keys: list[str]) -> None:
        with self.db.write() as conn:
            conn.execute(login_failures.delete().where(login_failures.c.key.in_(keys)))
