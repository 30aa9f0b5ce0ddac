"""The janitor: deletes what can no longer matter, so anonymous requests cannot grow the
database forever. It runs inside every provider (oauth_provider.py starts it); on PostgreSQL
one replica sweeps at a time (an advisory lock), and every delete is idempotent anyway.

What is kept, and why:
- tokens until `retention` seconds past their expiry. An expired refresh token is refused
  before replay detection looks at it (grants.py), so keeping it longer detects nothing;
  the retention only keeps recent history for the admin view and for debugging.
- a used authorization code as long as a token it bought exists (a replayed code still
  revokes them, RFC 6749 §4.1.2); an unused one only until it expires (it can never be
  replayed).
- a token family while it holds a token; the exchange links of tokens that are gone.
- device codes until they expire (anyone may ask for one, and an expired one is refused
  whether it is stored or not); refresh-grace answers once their grace ended; login-failure
  rows once they no longer count; rate-limit windows once they ended.
- security events until `retention` seconds past the expiry of the last token they name
  (a stream that had not acknowledged one is told, security_events.py); event streams until
  they were not polled for `idle_stream` seconds (their receiver is gone).
- self-registered clients with no token family (never used, or every token long gone) once
  they are older than `unused_client` seconds; pre-registered clients always. The client
  cache of the process that swept (`clients`) forgets them at once; other processes' caches
  within CLIENT_CACHE_SECONDS (storage/clients.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy import and_, delete, exists, or_, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from mcp_oauth.provider.storage.clients import ClientStore
from mcp_oauth.provider.storage.database import Database, now
from mcp_oauth.provider.storage.login_throttle import LOGIN_FAILURE_WINDOW
from mcp_oauth.provider.storage.schema import (
    authorization_codes,
    clients,
    device_codes,
    login_failures,
    rate_limits,
    refresh_replies,
    token_exchanges,
    token_families,
    tokens,
)
from mcp_oauth.provider.storage.security_events import SecurityEvents

log = logging.getLogger("oauth_provider")
JANITOR_LOCK = 7262002  # PostgreSQL advisory lock id: one sweeping replica at a time


@dataclass(frozen=True)
class Retention:
    retention: int = 24 * 3600  # seconds expired tokens (and used codes) are kept
    unused_client: int = 24 * 3600  # seconds a self-registered client may stay unused
    idle_stream: int = 24 * 3600  # seconds an event stream may go unpolled


class Janitor:
    def __init__(self, db: Database, retention: Retention, clients: ClientStore):
        self.db = db
        self.retention = retention
        self.clients = clients  # its cache forgets the clients deleted here, at once

    def sweep(self, at: int | None = None) -> dict[str, int]:
        """Delete what no longer matters as of `at` (default now); how many rows per table.
        An empty dict when another replica is sweeping."""
        stamp = now() if at is None else at
        with self.db.write() as conn:
            if (
                conn.dialect.name == "postgresql"
                and not conn.execute(
                    text(f"SELECT pg_try_advisory_xact_lock({JANITOR_LOCK})")
                ).scalar()
            ):
                return {}
            deleted = self._sweep(conn, stamp, stamp - self.retention.retention)
            gone = self._delete_unused_clients(conn, stamp)
            deleted["clients"] = len(gone)
        for client_id in gone:  # committed: this process's cache forgets them at once
            self.clients.forget(client_id)
        if any(deleted.values()):
            log.info("janitor deleted %s", deleted)
        return deleted

    def running_every(self, seconds: int):
        """An ASGI lifespan that sweeps every `seconds` (never when 0) while the app serves."""

        async def sweep_periodically() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    await asyncio.to_thread(self.sweep)
                except SQLAlchemyError:  # the database is away: the next sweep catches up
                    log.warning("janitor sweep failed; retrying in %s s", seconds)

        @contextlib.asynccontextmanager
        async def lifespan(app):
            task = asyncio.create_task(sweep_periodically()) if seconds > 0 else None
            yield
            if task:
                task.cancel()

        return lifespan

    def _sweep(self, conn: Connection, stamp: int, expired_before: int) -> dict[str, int]:
        def remove(table, *where) -> int:
            return conn.execute(delete(table).where(*where)).rowcount

        token_of_family = exists().where(tokens.c.grant_id == token_families.c.grant_id)
        token_of_code = exists().where(tokens.c.grant_id == authorization_codes.c.grant_id)
        return {
            "tokens": remove(tokens, tokens.c.expires_at < expired_before),
            "token_exchanges": remove(
                token_exchanges,
                ~exists().where(tokens.c.token_hash == token_exchanges.c.token_hash),
            ),
            "token_families": remove(
                token_families, token_families.c.created_at < expired_before, ~token_of_family
            ),
            "authorization_codes": remove(
                authorization_codes,
                authorization_codes.c.expires_at < stamp,
                or_(
                    authorization_codes.c.used_at.is_(None),
                    and_(authorization_codes.c.expires_at < expired_before, ~token_of_code),
                ),
            ),
            "device_codes": remove(device_codes, device_codes.c.expires_at < stamp),
            "refresh_replies": remove(refresh_replies, refresh_replies.c.expires_at <= stamp),
            "login_failures": remove(
                login_failures, login_failures.c.last_failure_at <= stamp - LOGIN_FAILURE_WINDOW
            ),
            "rate_limits": remove(rate_limits, rate_limits.c.resets_at <= stamp),
            **SecurityEvents.prune(conn, expired_before, stamp - self.retention.idle_stream),
        }

    def _delete_unused_clients(self, conn: Connection, stamp: int) -> list[str]:
        """Self-registered clients never used (no token family, code or device code), past
        their grace: the ids deleted, so this process's client cache can forget them."""
        statement = (
            delete(clients)
            .where(
                and_(
                    clients.c.preregistered.is_(False),
                    clients.c.created_at < stamp - self.retention.unused_client,
                ),
                ~exists().where(token_families.c.client_id == clients.c.client_id),
                ~select(authorization_codes.c.client_id)
                .where(authorization_codes.c.client_id == clients.c.client_id)
                .exists(),
                ~select(device_codes.c.client_id)
                .where(device_codes.c.client_id == clients.c.client_id)
                .exists(),
            )
            .returning(clients.c.client_id)
        )
        return list(conn.execute(statement).scalars())
