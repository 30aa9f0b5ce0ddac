"""The provider's tables (SQLAlchemy 2 Core). Names and columns are what existing databases
and running replicas hold, so they stay as they are; where a name predates the code's words,
the comment says which word the code uses."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, Text

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
    Column("grant_id", String(36)),  # the token family the code was redeemed for
    Column("nonce", Text),  # OpenID Connect; added to older databases at start (database.py)
)

# One row per token family: every token issued from one code, one device approval, one
# client_credentials request or one token exchange. Revoking the family revokes them all.
# (The code calls it a family; "grant" there means an OAuth grant type.)
token_families = Table(
    "grants",
    metadata,
    Column("grant_id", String(36), primary_key=True),  # the family id
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
    Column("grant_id", String(36), nullable=False, index=True),  # the family id
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
    Column("granted_scope", Text),  # the scope the user approved
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

# One row per signed-in browser (storage/sessions.py): signing out deletes it.
sessions = Table(
    "sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),  # the cookie's session id, hashed
    Column("username", String(200), nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("expires_at", Integer, nullable=False, index=True),
)

# Tokens issued by token exchange (RFC 8693): the token each was exchanged for, so revoking
# that subject token revokes them too, and the chain of actors, nearest first (RFC 8693 §4.1).
token_exchanges = Table(
    "token_exchanges",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("subject_hash", String(64), nullable=False, index=True),
    Column("actors", Text, nullable=False),  # JSON list of client ids
)

# The answer to a refresh, kept for a short grace so that a client whose reply was lost (a
# crash, a dropped connection) gets the same tokens again by retrying with the refresh token
# it presented. Sealed with a key derived from that refresh token: the row alone reveals
# nothing (refresh_replies.py).
refresh_replies = Table(
    "refresh_replies",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # the refresh token presented
    Column("successor_hash", String(64), nullable=False, index=True),  # the one it bought
    Column("client_id", String(200), nullable=False),
    Column("sealed", Text, nullable=False),  # JWE (dir, A256GCM) of the token answer
    Column("created_at", Integer, nullable=False),
    Column("expires_at", Integer, nullable=False, index=True),
)

# Fixed-window request counters (e.g. registrations per client address), shared by replicas.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("resets_at", Integer, nullable=False, index=True),
)

# The log of security events (revocations) every replica serves to resource servers
# (storage/security_events.py): one row per event, appended in the transaction that revokes.
# `seq` never goes back (AUTOINCREMENT on SQLite, a sequence on PostgreSQL), so a stream's
# position is one number.
security_events = Table(
    "security_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("jti", String(36), nullable=False, unique=True),
    Column("created_at", Integer, nullable=False),
    Column("keep_until", Integer, nullable=False, index=True),  # the latest exp it names
    Column("payload", Text, nullable=False),  # JSON: sub_id, events, toe (the SET is signed later)
    sqlite_autoincrement=True,
)

# One row per receiver (a resource-server process): its client and the last event it
# acknowledged (RFC 8936 §2.4), so any replica can serve its next poll.
event_streams = Table(
    "event_streams",
    metadata,
    Column("stream_id", String(36), primary_key=True),
    Column("client_id", String(200), nullable=False, index=True),
    Column("position", Integer, nullable=False),  # every event up to this seq is acknowledged
    Column("events_lost", Boolean, nullable=False, default=False),  # pruned before acknowledged
    Column("created_at", Integer, nullable=False),
    Column("polled_at", Integer, nullable=False, index=True),
)
