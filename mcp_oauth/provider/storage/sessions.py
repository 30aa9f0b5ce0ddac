"""Browser sessions held by the server: the cookie carries only a random session id, the row
says who signed in, so signing out ends the session for every copy of the cookie and every
replica (a signed cookie alone would stay valid until it expires)."""

from __future__ import annotations

from sqlalchemy import delete, insert, select

from mcp_oauth.provider.hashed_secrets import new_secret, secret_hash
from mcp_oauth.provider.storage.database import Database, now
from mcp_oauth.provider.storage.schema import sessions

SESSION_LIFETIME = 8 * 3600  # seconds a sign-in lasts


class SessionStore:
    def __init__(self, db: Database, lifetime: int = SESSION_LIFETIME):
        self.db = db
        self.lifetime = lifetime

    def start(self, username: str) -> str:
        """A new session for `username`; returns its id (stored only as a hash). Sessions
        past their lifetime are deleted on the way, so the table holds at most those
        started within one lifetime."""
        session_id, stamp = new_secret(), now()
        with self.db.write() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_at <= stamp))
            conn.execute(
                insert(sessions).values(
                    session_hash=secret_hash(session_id),
                    username=username,
                    created_at=stamp,
                    expires_at=stamp + self.lifetime,
                )
            )
        return session_id

    def username(self, session_id: str) -> str | None:
        """Who this live session belongs to; None once it ended or expired."""
        return self._live(sessions.c.username, session_id)

    def started_at(self, session_id: str) -> int | None:
        """When the person signed in to this live session (OpenID Connect `auth_time`)."""
        return self._live(sessions.c.created_at, session_id)

    def _live(self, column, session_id: str):
        """`column` of this session while it lives; None once it ended or expired."""
        query = select(column).where(
            sessions.c.session_hash == secret_hash(session_id), sessions.c.expires_at > now()
        )
        with self.db.engine.connect() as conn:
            return conn.execute(query).scalar()

    def end(self, session_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(sessions).where(sessions.c.session_hash == secret_hash(session_id)))
