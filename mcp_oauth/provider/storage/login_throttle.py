"""Sign-in attempts per key (an account, a client address), shared by every replica, so the
sign-in page can slow down password guessing.

An attempt is reserved before its password is checked, by one statement per key that both
decides and counts (INSERT … ON CONFLICT DO UPDATE … WHERE free … RETURNING): N concurrent
guesses cost N attempts, and none of them reaches argon2 once the key must wait. A success
then gives its attempt back (`signed_in`)."""

from __future__ import annotations

import math

from sqlalchemy import and_, case, not_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from mcp_oauth.provider.storage.database import Database, now
from mcp_oauth.provider.storage.schema import login_failures

LOGIN_FAILURE_WINDOW = 900  # seconds after which a failed sign-in no longer counts
FREE_LOGIN_FAILURES = 5  # attempts before the first wait
MAX_LOGIN_BACKOFF = 300  # seconds


def backoff_schedule(base: float) -> list[tuple[int, int]]:
    """(failures, seconds to wait after the last one) while the wait is below its maximum:
    none for the first few failures, then doubling (for base 2) up to five minutes."""
    if base <= 1:
        raise ValueError("the sign-in backoff base must be above 1")
    schedule, failures = [], FREE_LOGIN_FAILURES
    while (seconds := math.ceil(base ** (failures - FREE_LOGIN_FAILURES + 1))) < MAX_LOGIN_BACKOFF:
        schedule.append((failures, seconds))
        failures += 1
    return schedule


class LoginThrottle:
    def __init__(self, db: Database, backoff_base: float = 2.0):
        self.db = db
        self.schedule = backoff_schedule(backoff_base)

    def backoff(self, failures: int) -> int:
        """Seconds a key with this many recent failures waits after the last one."""
        if failures < FREE_LOGIN_FAILURES:
            return 0
        return dict(self.schedule).get(failures, MAX_LOGIN_BACKOFF)

    def reserve(self, keys: list[str]) -> bool:
        """Count one more attempt for every key, or for none when one of them must still
        wait (then False). One transaction; each key in one atomic statement, so concurrent
        requests and replicas cannot all read a free count before any of them records."""
        table, stamp = login_failures, now()
        backoff = case(
            *[(table.c.failures == n, seconds) for n, seconds in self.schedule],
            else_=MAX_LOGIN_BACKOFF,
        )
        waiting = and_(
            table.c.failures >= FREE_LOGIN_FAILURES, table.c.last_failure_at + backoff > stamp
        )
        stale = table.c.last_failure_at <= stamp - LOGIN_FAILURE_WINDOW
        with self.db.write() as conn:
            insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
            for key in keys:  # always in the caller's order: replicas lock rows alike
                reserved = conn.execute(
                    insert(table)
                    .values(key=key, failures=1, last_failure_at=stamp)
                    .on_conflict_do_update(
                        index_elements=[table.c.key],
                        set_={
                            "failures": case((stale, 1), else_=table.c.failures + 1),
                            "last_failure_at": stamp,
                        },
                        where=not_(waiting),
                    )
                    .returning(table.c.failures)
                ).first()
                if reserved is None:
                    conn.get_transaction().rollback()
                    return False
        return True

    def signed_in(self, account_key: str, address_key: str) -> None:
        """The right password: the account's failures are forgotten, and the address gets
        back the attempt reserved for it (a success is no failure)."""
        table = login_failures
        with self.db.write() as conn:
            conn.execute(table.delete().where(table.c.key == account_key))
            conn.execute(
                update(table)
                .where(table.c.key == address_key, table.c.failures > 0)
                .values(failures=table.c.failures - 1)
            )

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

    def wait_seconds(self, keys: list[str]) -> int:
        """Whole seconds until every key may try again (0 when all may)."""
        waits = [last + self.backoff(count) - now() for count, last in self.failures(keys)]
        return math.ceil(max([0, *waits]))
