"""The security event log and the streams that read it (the provider as an SSF transmitter).

Every revocation appends one event in the transaction that revokes (tokens.py), so an event
exists exactly when its revocation committed, whichever replica made it. An event records
facts (which tokens, which family or user, why); security_event_tokens.py turns them into the
signed SET a receiver gets.

A stream is one receiver's position in the log: every event up to `position` is acknowledged
(RFC 8936 §2.4). Positions are numbers because `seq` only grows, and events become visible in
`seq` order: on PostgreSQL appenders take an advisory lock held until they commit, so no event
can appear behind a position a stream already passed. Appending rings the doorbell once the
transaction committed; other processes learn of it from PostgreSQL's NOTIFY, or on SQLite
from the file's data_version (event_wakeups.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.engine import Connection

from mcp_oauth.provider.storage.database import Database, now
from mcp_oauth.provider.storage.schema import event_streams, security_events

NOTIFY_CHANNEL = "mcp_oauth_security_events"
APPEND_LOCK = 7262003  # PostgreSQL advisory lock id: events become visible in seq order


class Doorbell:
    """Wakes the long polls of this process when an event may have been appended: rung from
    any thread, waited on in the event loop. `generation` is read before looking at the log,
    so a ring between the look and the wait is never missed. `on_wait`, if set, is called in
    the loop whenever a poll starts waiting (event_wakeups.py watches other processes then)."""

    def __init__(self) -> None:
        self._rings = itertools.count(1)
        self.generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self.on_wait: Callable[[], None] | None = None

    @property
    def waiting(self) -> bool:
        return bool(self._waiters)

    def ring(self) -> None:
        self.generation = next(self._rings)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, generation: int, timeout: float) -> None:
        """Until a ring after `generation`, or `timeout` seconds."""
        self._loop = asyncio.get_running_loop()
        if self.generation != generation:
            return
        waiter = self._loop.create_future()
        self._waiters.add(waiter)
        if self.on_wait is not None:
            self.on_wait()
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    jti: str
    created_at: int
    keep_until: int
    facts: dict[str, Any]


@dataclass(frozen=True)
class Stream:
    stream_id: str
    client_id: str
    position: int
    events_lost: bool
    created_at: int


class SecurityEvents:
    def __init__(self, db: Database):
        self.db = db
        self.doorbell = Doorbell()

    def append(self, conn: Connection, facts: dict[str, Any], keep_until: int) -> None:
        """One event, inside the caller's (revoking) transaction; call it after every other
        lock that transaction takes."""
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"SELECT pg_advisory_xact_lock({APPEND_LOCK})"))
            conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
        stamp = now()
        conn.execute(
            insert(security_events).values(
                jti=str(uuid.uuid4()),
                created_at=stamp,
                keep_until=max(keep_until, stamp),
                payload=json.dumps(facts),
            )
        )
        self.db.after_commit(conn, self.doorbell.ring)

    # -- streams ---------------------------------------------------------------------------

    def create_stream(self, client_id: str) -> Stream:
        """A new stream for `client_id`, starting at the first event whose tokens may still
        be live, so a receiver that restarts learns every revocation that still matters."""
        stamp = now()
        events = security_events.c
        with self.db.write() as conn:
            first_live = conn.execute(
                select(func.min(events.seq)).where(events.keep_until >= stamp)
            ).scalar()
            last = conn.execute(select(func.max(events.seq))).scalar() or 0
            position = first_live - 1 if first_live is not None else last
            stream = Stream(str(uuid.uuid4()), client_id, position, False, stamp)
            conn.execute(
                insert(event_streams).values(
                    stream_id=stream.stream_id,
                    client_id=client_id,
                    position=position,
                    events_lost=False,
                    created_at=stamp,
                    polled_at=stamp,
                )
            )
        return stream

    def stream(self, stream_id: str, client_id: str) -> Stream | None:
        """The stream, if it exists and belongs to `client_id`."""
        streams = event_streams.c
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(event_streams).where(
                    streams.stream_id == stream_id, streams.client_id == client_id
                )
            ).first()
        if row is None:
            return None
        return Stream(row.stream_id, row.client_id, row.position, row.events_lost, row.created_at)

    def delete_stream(self, stream_id: str, client_id: str) -> bool:
        streams = event_streams.c
        with self.db.write() as conn:
            return bool(
                conn.execute(
                    delete(event_streams).where(
                        streams.stream_id == stream_id, streams.client_id == client_id
                    )
                ).rowcount
            )

    def acknowledge(self, stream_id: str, jtis: list[str]) -> int:
        """Move the stream's position over every acknowledged event that follows it without a
        gap (RFC 8936 §2.4.1); what is left unacknowledged is delivered again. The new position."""
        events, streams = security_events.c, event_streams.c
        with self.db.write() as conn:
            position = conn.execute(
                select(streams.position).where(streams.stream_id == stream_id)
            ).scalar()
            if position is None:
                return 0
            if jtis:
                acked = set(
                    conn.execute(
                        select(events.seq).where(events.jti.in_(jtis), events.seq > position)
                    ).scalars()
                )
                following = conn.execute(
                    select(events.seq)
                    .where(events.seq > position, events.seq <= max(acked, default=position))
                    .order_by(events.seq)
                ).scalars()
                for seq in following:
                    if seq not in acked:
                        break
                    position = seq
            conn.execute(
                update(event_streams)
                .where(streams.stream_id == stream_id)
                .values(position=position, polled_at=now())
            )
            return position

    def pending(self, position: int, limit: int) -> tuple[list[StoredEvent], bool]:
        """Up to `limit` events after `position`, oldest first, and whether more follow."""
        events = security_events.c
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(security_events)
                .where(events.seq > position)
                .order_by(events.seq)
                .limit(limit + 1)
            ).all()
        found = [
            StoredEvent(row.seq, row.jti, row.created_at, row.keep_until, json.loads(row.payload))
            for row in rows[:limit]
        ]
        return found, len(rows) > limit

    # -- the janitor -----------------------------------------------------------------------

    @staticmethod
    def prune(conn: Connection, expired_before: int, unpolled_before: int) -> dict[str, int]:
        """Delete events whose tokens expired before `expired_before`, telling every stream
        that had not acknowledged them (events_lost); and streams not polled since
        `unpolled_before` (their receiver is gone)."""
        events, streams = security_events.c, event_streams.c
        last_pruned = conn.execute(
            select(func.max(events.seq)).where(events.keep_until < expired_before)
        ).scalar()
        lost = 0
        if last_pruned is not None:
            lost = conn.execute(
                update(event_streams)
                .where(streams.position < last_pruned, streams.events_lost.is_(False))
                .values(events_lost=True)
            ).rowcount
        return {
            "security_events": conn.execute(
                delete(security_events).where(events.keep_until < expired_before)
            ).rowcount,
            "event_streams_lost": lost,
            "event_streams": conn.execute(
                delete(event_streams).where(streams.polled_at < unpolled_before)
            ).rowcount,
        }
