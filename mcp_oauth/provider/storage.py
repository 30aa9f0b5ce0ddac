"""Durable storage for the authorization server (SQLAlchemy 2 Core).

SQLite (WAL) is the embedded default; the same statements run on PostgreSQL so several
provider replicas can share one database. Every secret the provider hands out (codes,
tokens, device codes, client secrets) is stored only as a SHA-256 hash: they are
high-entropy random strings, so a fast hash is enough and keeps lookups cheap.

Single use and rotation are decided by the database, not by the Python process: a code is
redeemed, and a refresh token rotated, by an UPDATE that only matches an unused row, in
the same transaction that stores the new tokens. Two replicas racing on one code or one
refresh token therefore get exactly one winner.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from mcp_oauth.common.sql import create_storage_engine
from mcp_oauth.provider.records import ClientRecord, CodeRecord, DeviceRecord, TokenRecord


def secret_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def now() -> int:
    return int(time.time())


CLIENT_CACHE_SECONDS = 30
LOGIN_FAILURE_WINDOW = 900  # seconds after which a failed sign-in no longer counts

metadata = MetaData()

clients = Table(
    "clients",
    metadata,
    Column("client_id", String(200), primary_key=True),
    Column("secret_hash", String(64)),
    Column("metadata_json", Text, nullable=False),
    Column("resource_server", Boolean, nullable=False, default=False),
    Column("may_exchange_tokens", Boolean, nullable=False, default=False),
    Column("preregistered", Boolean, nullable=False, default=False),
    Column("created_at", Integer, nullable=False),
)

authorization_codes = Table(
    "authorization_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(200), nullable=False),
    Column("username", String(200), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("resource", Text),
    Column("code_challenge", String(128), nullable=False),
    Column("code_challenge_method", String(10), nullable=False),
    Column("auth_time", Integer, nullable=False),
    Column("expires_at", Integer, nullable=False),
    Column("used_at", Integer),
    Column("grant_id", String(36)),
)

# A grant is one authorization: the family of every token issued from one code, one device
# approval, one client_credentials request or one token exchange. Revoking it revokes all.
grants = Table(
    "grants",
    metadata,
    Column("grant_id", String(36), primary_key=True),
    Column("client_id", String(200), nullable=False, index=True),
    Column("username", String(200), index=True),
    Column("scope", Text, nullable=False),
    Column("resource", Text),
    Column("actor", String(200)),
    Column("created_at", Integer, nullable=False),
    Column("revoked_at", Integer),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("kind", String(10), nullable=False),  # "access" | "refresh"
    Column("grant_id", String(36), nullable=False, index=True),
    Column("client_id", String(200), nullable=False),
    Column("username", String(200)),
    Column("scope", Text, nullable=False),
    Column("resource", Text),
    Column("actor", String(200)),
    Column("issued_at", Integer, nullable=False),
    Column("expires_at", Integer, nullable=False),
    Column("revoked_at", Integer),
    Column("used_at", Integer),  # refresh tokens: set when rotated
)

device_codes = Table(
    "device_codes",
    metadata,
    Column("device_code_hash", String(64), primary_key=True),
    Column("user_code", String(20), nullable=False, unique=True),
    Column("client_id", String(200), nullable=False),
    Column("scope", Text, nullable=False),
    Column("resource", Text),
    Column("expires_at", Integer, nullable=False),
    Column("interval", Integer, nullable=False),
    Column("last_polled_at", Integer),
    Column("username", String(200)),
    Column("granted_scope", Text),
    Column("decision", String(10)),  # None (pending) | "approved" | "denied"
    Column("used_at", Integer),
)

server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_failure_at", Integer, nullable=False),
)


@dataclass
class IssuedToken:
    """A token just generated, before it is stored (the plain value never is)."""

    value: str
    kind: str
    expires_at: int
    scope: str


@dataclass
class GrantSpec:
    """What a new grant (token family) is issued for."""

    client_id: str
    username: str | None
    scope: str
    resource: str | None
    actor: str | None = None
    grant_id: str = field(default_factory=lambda: str(uuid.uuid4()))


class Store:
    """Every read and write the authorization server makes, each in its own transaction."""

    def __init__(self, url: str):
        self.engine = create_storage_engine(url)
        # SQLite has one write lock per database: writers of this process queue here rather
        # than in SQLite's busy handler, which sleeps between retries. (Other processes are
        # still kept out by SQLite itself.) PostgreSQL locks rows, so it needs no such queue.
        self._sqlite_writer = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        # Clients change only at start (users.yaml) or by registration: a client read from the
        # database is reused briefly instead of being read for every token request.
        self._clients: TTLCache = TTLCache(maxsize=1024, ttl=CLIENT_CACHE_SECONDS)
        self._clients_lock = threading.Lock()  # cachetools caches are not thread-safe
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas starting together on an empty database: one creates the tables.
                # (On SQLite the write transaction itself serializes them.)
                conn.execute(text("SELECT pg_advisory_xact_lock(7262001)"))
            metadata.create_all(conn)

    def _upsert(self, conn: Connection, table: Table, row: dict, on_conflict: dict) -> None:
        """INSERT row, or apply on_conflict to the row with its primary key, atomically (two
        replicas writing the same key at once must not fail)."""
        insert_for = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            insert_for(table)
            .values(**row)
            .on_conflict_do_update(index_elements=list(table.primary_key.columns), set_=on_conflict)
        )

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction: committed on success, rolled back on error."""
        with self._sqlite_writer or nullcontext(), self.engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                yield conn

    # -- server secrets ------------------------------------------------------------------

    def server_secret(self, name: str, create: Callable[[], str]) -> str:
        """The named secret, created once and shared by every replica and restart."""
        with self.engine.connect() as conn:
            row = conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == name))
            value = row.scalar()
        if value is not None:
            return value
        try:
            with self._write() as conn:
                conn.execute(insert(server_secrets).values(name=name, value=create()))
        except IntegrityError:
            pass  # another replica created it first; use theirs
        with self.engine.connect() as conn:
            return conn.execute(
                select(server_secrets.c.value).where(server_secrets.c.name == name)
            ).scalar_one()

    # -- clients -------------------------------------------------------------------------

    def save_client(
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
        with self._write() as conn:
            self._upsert(
                conn, clients, {"client_id": client_id, "created_at": now(), **values}, values
            )

    def get_client(self, client_id: str) -> ClientRecord | None:
        with self._clients_lock:
            cached = self._clients.get(client_id)
        if cached is not None:
            return cached
        with self.engine.connect() as conn:
            row = conn.execute(select(clients).where(clients.c.client_id == client_id)).first()
        if row is None:
            return None
        record = ClientRecord(
            client_id=row.client_id,
            secret_hash=row.secret_hash,
            metadata=json.loads(row.metadata_json),
            resource_server=row.resource_server,
            may_exchange_tokens=row.may_exchange_tokens,
            preregistered=row.preregistered,
        )
        with self._clients_lock:
            self._clients[client_id] = record
        return record

    # -- authorization codes -------------------------------------------------------------

    def save_code(self, code: str, record: CodeRecord) -> None:
        with self._write() as conn:
            conn.execute(
                insert(authorization_codes).values(
                    code_hash=secret_hash(code),
                    client_id=record.client_id,
                    username=record.username,
                    redirect_uri=record.redirect_uri,
                    scope=record.scope,
                    resource=record.resource,
                    code_challenge=record.code_challenge,
                    code_challenge_method=record.code_challenge_method,
                    auth_time=record.auth_time,
                    expires_at=record.expires_at,
                )
            )

    def find_code(self, code: str) -> tuple[CodeRecord, bool] | None:
        """The code's record and whether it was already used, or None if it never existed."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(authorization_codes).where(
                    authorization_codes.c.code_hash == secret_hash(code)
                )
            ).first()
        if row is None:
            return None
        record = CodeRecord(
            code_hash=row.code_hash,
            client_id=row.client_id,
            username=row.username,
            redirect_uri=row.redirect_uri,
            scope=row.scope,
            resource=row.resource,
            code_challenge=row.code_challenge,
            code_challenge_method=row.code_challenge_method,
            auth_time=row.auth_time,
            expires_at=row.expires_at,
        )
        return record, row.used_at is not None

    def redeem_code(self, code: CodeRecord, spec: GrantSpec, issued: list[IssuedToken]) -> bool:
        """Mark the code used and store its tokens, atomically; False if it was used already."""
        with self._write() as conn:
            claimed = conn.execute(
                update(authorization_codes)
                .where(
                    authorization_codes.c.code_hash == code.code_hash,
                    authorization_codes.c.used_at.is_(None),
                )
                .values(used_at=now(), grant_id=spec.grant_id)
            ).rowcount
            if not claimed:
                return False
            self._insert_grant(conn, spec, issued)
            return True

    def revoke_code_grant(self, code: CodeRecord) -> None:
        """A used code was presented again: revoke every token issued from it (RFC 6749 §4.1.2)."""
        with self.engine.connect() as conn:
            grant_id = conn.execute(
                select(authorization_codes.c.grant_id).where(
                    authorization_codes.c.code_hash == code.code_hash
                )
            ).scalar()
        if grant_id:
            self.revoke_grant(grant_id)

    # -- grants and tokens ---------------------------------------------------------------

    def _insert_grant(self, conn: Connection, spec: GrantSpec, issued: list[IssuedToken]) -> None:
        issued_at = now()
        conn.execute(
            insert(grants).values(
                grant_id=spec.grant_id,
                client_id=spec.client_id,
                username=spec.username,
                scope=spec.scope,
                resource=spec.resource,
                actor=spec.actor,
                created_at=issued_at,
            )
        )
        self._insert_tokens(conn, spec, issued, issued_at)

    @staticmethod
    def _insert_tokens(
        conn: Connection, spec: GrantSpec, issued: list[IssuedToken], issued_at: int
    ) -> None:
        conn.execute(
            insert(tokens),
            [
                {
                    "token_hash": secret_hash(token.value),
                    "kind": token.kind,
                    "grant_id": spec.grant_id,
                    "client_id": spec.client_id,
                    "username": spec.username,
                    "scope": token.scope,
                    "resource": spec.resource,
                    "actor": spec.actor,
                    "issued_at": issued_at,
                    "expires_at": token.expires_at,
                }
                for token in issued
            ],
        )

    def save_grant(self, spec: GrantSpec, issued: list[IssuedToken]) -> None:
        with self._write() as conn:
            self._insert_grant(conn, spec, issued)

    def find_token(self, value: str, kind: str | None = None) -> TokenRecord | None:
        query = select(tokens).where(tokens.c.token_hash == secret_hash(value))
        if kind:
            query = query.where(tokens.c.kind == kind)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return TokenRecord(
            token_hash=row.token_hash,
            kind=row.kind,
            grant_id=row.grant_id,
            client_id=row.client_id,
            username=row.username,
            scope=row.scope,
            resource=row.resource,
            actor=row.actor,
            issued_at=row.issued_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            used_at=row.used_at,
        )

    def rotate_refresh_token(
        self, old: TokenRecord, spec: GrantSpec, issued: list[IssuedToken]
    ) -> bool:
        """Spend the refresh token and store its successors, atomically.

        False when it was spent or revoked already: the caller then revokes the family.
        The grant row is locked first, so a concurrent revocation of the family either
        happens before (and this fails) or after (and also revokes what this stores).
        """
        with self._write() as conn:
            live_grant = conn.execute(
                update(grants)
                .where(grants.c.grant_id == old.grant_id, grants.c.revoked_at.is_(None))
                .values(scope=grants.c.scope)
            ).rowcount
            if not live_grant:
                return False
            spent = conn.execute(
                update(tokens)
                .where(
                    tokens.c.token_hash == old.token_hash,
                    tokens.c.used_at.is_(None),
                    tokens.c.revoked_at.is_(None),
                )
                .values(used_at=now())
            ).rowcount
            if not spent:
                return False
            self._insert_tokens(conn, spec, issued, now())
            return True

    def revoke_grant(self, grant_id: str) -> int:
        """Revoke a grant and every token in it; returns how many tokens were live."""
        stamp = now()
        with self._write() as conn:
            conn.execute(
                update(grants)
                .where(grants.c.grant_id == grant_id, grants.c.revoked_at.is_(None))
                .values(revoked_at=stamp)
            )
            return conn.execute(
                update(tokens)
                .where(tokens.c.grant_id == grant_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=stamp)
            ).rowcount

    def revoke_token(self, token: TokenRecord) -> None:
        """RFC 7009: an access token alone; a refresh token takes its whole family with it."""
        if token.kind == "refresh":
            self.revoke_grant(token.grant_id)
            return
        with self._write() as conn:
            conn.execute(
                update(tokens)
                .where(tokens.c.token_hash == token.token_hash, tokens.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )

    # -- administration (for resource servers) -------------------------------------------

    def active_grants(self) -> list[dict]:
        """Grants of users that still hold a live token."""
        stamp = now()
        live = (
            select(tokens.c.grant_id)
            .where(tokens.c.revoked_at.is_(None), tokens.c.expires_at > stamp)
            .where(tokens.c.used_at.is_(None))
        )
        query = (
            select(grants)
            .where(grants.c.revoked_at.is_(None), grants.c.username.is_not(None))
            .where(grants.c.grant_id.in_(live))
            .order_by(grants.c.created_at)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            {
                "username": row.username,
                "client_id": row.client_id,
                "scope": row.scope,
                "resource": row.resource,
                "granted_at": row.created_at,
            }
            for row in rows
        ]

    def revoke_user(self, username: str) -> int:
        with self.engine.connect() as conn:
            grant_ids = (
                conn.execute(
                    select(grants.c.grant_id).where(
                        grants.c.username == username, grants.c.revoked_at.is_(None)
                    )
                )
                .scalars()
                .all()
            )
        return sum(self.revoke_grant(grant_id) for grant_id in grant_ids)

    # -- device authorization (RFC 8628) -------------------------------------------------

    def save_device_code(
        self,
        device_code: str,
        user_code: str,
        client_id: str,
        scope: str,
        resource: str | None,
        expires_in: int,
        interval: int,
    ) -> None:
        with self._write() as conn:
            conn.execute(
                insert(device_codes).values(
                    device_code_hash=secret_hash(device_code),
                    user_code=user_code,
                    client_id=client_id,
                    scope=scope,
                    resource=resource,
                    expires_at=now() + expires_in,
                    interval=interval,
                )
            )

    def _device_record(self, row: Any) -> DeviceRecord:
        return DeviceRecord(
            device_code_hash=row.device_code_hash,
            user_code=row.user_code,
            client_id=row.client_id,
            scope=row.scope,
            resource=row.resource,
            expires_at=row.expires_at,
            interval=row.interval,
            username=row.username,
            granted_scope=row.granted_scope,
            decision=row.decision,
            used_at=row.used_at,
        )

    def find_device_by_user_code(self, user_code: str) -> DeviceRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(device_codes).where(device_codes.c.user_code == user_code)
            ).first()
        return self._device_record(row) if row else None

    def decide_device_code(
        self, user_code: str, username: str, granted_scope: str, approved: bool
    ) -> bool:
        """Record the user's decision once; False if the code was decided or expired."""
        with self._write() as conn:
            return bool(
                conn.execute(
                    update(device_codes)
                    .where(
                        device_codes.c.user_code == user_code,
                        device_codes.c.decision.is_(None),
                        device_codes.c.expires_at > now(),
                    )
                    .values(
                        username=username,
                        granted_scope=granted_scope,
                        decision="approved" if approved else "denied",
                    )
                ).rowcount
            )

    def poll_device_code(self, device_code: str) -> tuple[DeviceRecord, bool] | None:
        """The device code and whether it was polled faster than its interval (slow_down).

        Each poll is recorded; a poll that comes too early raises the interval by 5 s for
        this and all later polls, as RFC 8628 §3.5 asks.
        """
        code_hash = secret_hash(device_code)
        stamp = time.time()
        with self._write() as conn:
            row = conn.execute(
                select(device_codes).where(device_codes.c.device_code_hash == code_hash)
            ).first()
            if row is None:
                return None
            too_fast = row.last_polled_at is not None and stamp - row.last_polled_at < row.interval
            interval = row.interval + 5 if too_fast else row.interval
            conn.execute(
                update(device_codes)
                .where(device_codes.c.device_code_hash == code_hash)
                .values(last_polled_at=int(stamp), interval=interval)
            )
        record = self._device_record(row)
        record.interval = interval
        return record, too_fast

    def redeem_device_code(
        self, record: DeviceRecord, spec: GrantSpec, issued: list[IssuedToken]
    ) -> bool:
        with self._write() as conn:
            claimed = conn.execute(
                update(device_codes)
                .where(
                    device_codes.c.device_code_hash == record.device_code_hash,
                    device_codes.c.used_at.is_(None),
                    device_codes.c.decision == "approved",
                )
                .values(used_at=now())
            ).rowcount
            if not claimed:
                return False
            self._insert_grant(conn, spec, issued)
            return True

    # -- login throttling ----------------------------------------------------------------

    def login_failures(self, keys: list[str]) -> list[tuple[int, int]]:
        """(failures, last_failure_at) for each key; zeros when there are none, or when the
        last one is older than LOGIN_FAILURE_WINDOW."""
        with self.engine.connect() as conn:
            rows = {
                row.key: (row.failures, row.last_failure_at)
                for row in conn.execute(
                    select(login_failures).where(login_failures.c.key.in_(keys))
                )
            }
        recent = now() - LOGIN_FAILURE_WINDOW
        return [rows[key] if key in rows and rows[key][1] > recent else (0, 0) for key in keys]

    def record_login_failure(self, keys: list[str]) -> None:
        """Count one more failure per key; a count whose last failure is older than
        LOGIN_FAILURE_WINDOW starts again from one, so old failures stop mattering."""
        stamp = now()
        table = login_failures
        restart = table.c.last_failure_at <= stamp - LOGIN_FAILURE_WINDOW
        with self._write() as conn:
            for key in keys:
                self._upsert(
                    conn,
                    table,
                    {"key": key, "failures": 1, "last_failure_at": stamp},  # the first failure
                    {
                        "failures": case((restart, 1), else_=table.c.failures + 1),
                        "last_failure_at": stamp,
                    },
                )

    def clear_login_failures(self, keys: list[str]) -> None:
        with self._write() as conn:
            conn.execute(login_failures.delete().where(login_failures.c.key.in_(keys)))


def new_secret() -> str:
    """A 256-bit random value, URL-safe: tokens, codes and server secrets."""
    return secrets.token_urlsafe(32)
