"""Clients: pre-registered ones re-synced from users.yaml at every start, and the ones that
registered themselves (RFC 7591). A client read from the database is reused briefly.

That reuse is the client-authentication cache of the hot endpoints: a secret is checked
against the cached record's hash, so a client changed or deleted by another replica (or
process) is honoured within CLIENT_CACHE_SECONDS; a change made through this store is
honoured at once (the cached record is dropped), and so is the deletion of unused clients
by the janitor of its own process (the Janitor is given this store).

A cache miss is one indexed read with a prebuilt statement (Database.read_first: on SQLite's
event loop, its own connection, no pool checkout). An unknown client id is not cached: its
miss costs the same microseconds, a client just registered at another worker or replica is
usable at once, and a flood of made-up ids cannot push real clients out of the cache."""

from __future__ import annotations

import json
import threading

from cachetools import TTLCache
from sqlalchemy import bindparam, select

from mcp_oauth.provider.hashed_secrets import secret_hash
from mcp_oauth.provider.records import ClientRecord
from mcp_oauth.provider.storage.database import Database, now
from mcp_oauth.provider.storage.schema import clients

CLIENT_CACHE_SECONDS = 30
FIND_CLIENT = select(clients).where(clients.c.client_id == bindparam("client_id"))


class ClientStore:
    def __init__(self, db: Database, cache_seconds: float = CLIENT_CACHE_SECONDS):
        self.db = db
        # Clients change only at start (users.yaml), by registration, or when the janitor
        # deletes an unused one: a client read from the database is reused briefly instead of
        # being read for every token request.
        self._cache: TTLCache = TTLCache(maxsize=1024, ttl=cache_seconds)
        self._cache_lock = threading.Lock()  # cachetools caches are not thread-safe

    def save(
        self,
        client_id: str,
        client_secret: str | None,
        client_metadata: dict,
        *,
        resource_server: bool = False,
        may_exchange_tokens: bool = False,
        preregistered: bool = False,
    ) -> None:
        """Insert or update a client (pre-registered clients are re-synced at every start)."""
        values = {
            "secret_hash": secret_hash(client_secret) if client_secret else None,
            "metadata_json": json.dumps(client_metadata),
            "resource_server": resource_server,
            "may_exchange_tokens": may_exchange_tokens,
            "preregistered": preregistered,
        }
        with self.db.write() as conn:
            self.db.upsert(
                conn, clients, {"client_id": client_id, "created_at": now(), **values}, values
            )
        self.forget(client_id)

    def forget(self, client_id: str) -> None:
        """Drop the cached record, so this process's next request reads the change."""
        with self._cache_lock:
            self._cache.pop(client_id, None)

    def is_cached(self, client_id: str) -> bool:
        """Whether `get` would answer without reading the database."""
        with self._cache_lock:
            return client_id in self._cache

    def get(self, client_id: str) -> ClientRecord | None:
        with self._cache_lock:
            cached = self._cache.get(client_id)
        if cached is not None:
            return cached
        row = self.db.read_first(FIND_CLIENT, {"client_id": client_id})
        if row is None:
            return None
        record = ClientRecord(
            client_id=row["client_id"],
            secret_hash=row["secret_hash"],
            metadata=json.loads(row["metadata_json"]),
            # LoopReader skips SQLAlchemy's result processing: SQLite's booleans are 0 or 1.
            resource_server=bool(row["resource_server"]),
            may_exchange_tokens=bool(row["may_exchange_tokens"]),
            preregistered=bool(row["preregistered"]),
        )
        with self._cache_lock:
            self._cache[client_id] = record
        return record
