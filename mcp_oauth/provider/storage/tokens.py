"""Token families and their tokens: stored by hash, rotated and revoked by the database.

A refresh token is rotated by an UPDATE that only matches an unspent row, in the same
transaction that stores its successors (and the sealed answer kept for the refresh grace),
so two replicas racing on one refresh token get exactly one winner. Revoking a family
revokes every token in it, exchanged tokens included; revoking an access token revokes the
tokens exchanged for it. Every revocation appends its security event (security_events.py) in
the transaction that revokes, so resource servers hear of exactly what committed.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import any_, bindparam, insert, select, update
from sqlalchemy.engine import Connection

from mcp_oauth.provider.hashed_secrets import secret_hash
from mcp_oauth.provider.records import IssuedToken, TokenFamily, TokenRecord
from mcp_oauth.provider.storage import prebuilt
from mcp_oauth.provider.storage.database import (
    Database,
    columns_from_record,
    now,
    record_from_row,
)
from mcp_oauth.provider.storage.refresh_replies import RefreshReplies
from mcp_oauth.provider.storage.schema import token_exchanges, token_families, tokens
from mcp_oauth.provider.storage.security_events import SecurityEvents

# The hot statements are built once and only bind their values per request, on the driver's
# cursor (prebuilt.py): building a statement and executing it through SQLAlchemy costs several
# times what SQLite then takes to run it.
TOKEN_ROWS = select(
    tokens, token_exchanges.c.subject_hash, token_exchanges.c.actors.label("actor_chain")
).outerjoin(token_exchanges, token_exchanges.c.token_hash == tokens.c.token_hash)
FIND_TOKEN = TOKEN_ROWS.where(tokens.c.token_hash == bindparam("token_hash"))
# PostgreSQL: the introspections waiting meanwhile, in one query (Database.read_by_key_async)
FIND_TOKENS = TOKEN_ROWS.where(tokens.c.token_hash == any_(bindparam("keys")))
FIND_TOKEN_OF_KIND = FIND_TOKEN.where(tokens.c.kind == bindparam("kind"))
INSERT_FAMILY = insert(token_families)
INSERT_TOKENS = insert(tokens)
# Locks the family row (a no-op UPDATE) unless the family is revoked: see _lock_family.
LOCK_FAMILY = (
    update(token_families)
    .where(token_families.c.grant_id == bindparam("family"), token_families.c.revoked_at.is_(None))
    .values(scope=token_families.c.scope)
)
# Spends a refresh token: matches only while it is neither spent nor revoked, so of two
# transactions spending it, one wins (single use decided by the database).
SPEND_TOKEN = (
    update(tokens)
    .where(
        tokens.c.token_hash == bindparam("spent"),
        tokens.c.used_at.is_(None),
        tokens.c.revoked_at.is_(None),
    )
    .values(used_at=bindparam("at"))
)


def insert_family(conn: Connection, family: TokenFamily, issued: list[IssuedToken]) -> None:
    """A new family and its first tokens, inside the caller's transaction (so spending a code
    or a device code and storing what it bought commit together)."""
    family_inserts(family, issued)(conn)


def family_inserts(family: TokenFamily, issued: list[IssuedToken]) -> prebuilt.Inserts:
    """The rows of a new family and its first tokens: the family's row first."""
    issued_at = now()
    family_row = {**columns_from_record(family, family_id="grant_id"), "created_at": issued_at}
    return prebuilt.Inserts(
        (INSERT_FAMILY, [family_row]), (INSERT_TOKENS, _token_rows(family, issued, issued_at))
    )


def _insert_tokens(
    conn: Connection, family: TokenFamily, issued: list[IssuedToken], issued_at: int
) -> None:
    prebuilt.execute(conn, INSERT_TOKENS, _token_rows(family, issued, issued_at))


def _token_rows(family: TokenFamily, issued: list[IssuedToken], issued_at: int) -> list[dict]:
    return [
        {
            "token_hash": secret_hash(token.value),
            "kind": token.kind,
            "grant_id": family.family_id,
            "client_id": family.client_id,
            "username": family.username,
            "scope": token.scope,
            "resource": family.resource,
            "actor": family.actor,
            "issued_at": issued_at,
            "expires_at": token.expires_at,
        }
        for token in issued
    ]


def _token_record(row) -> TokenRecord | None:
    return None if row is None else record_from_row(TokenRecord, row, family_id="grant_id")


def _lock_family(conn: Connection, family_id: str) -> bool:
    """Lock the family row for this transaction; False if the family is revoked. Whatever
    adds tokens to a family or revokes them takes this lock first, so a revocation either
    happens before (and the addition fails) or after (and also revokes what was added)."""
    return bool(prebuilt.execute(conn, LOCK_FAMILY, {"family": family_id}))


def _with_exchanged_descendants(conn: Connection, token_hash: str) -> set[str]:
    """The token and every token exchanged for it, or for those, and so on."""
    found, frontier = {token_hash}, {token_hash}
    while frontier:
        frontier = (
            set(
                conn.execute(
                    select(token_exchanges.c.token_hash).where(
                        token_exchanges.c.subject_hash.in_(frontier)
                    )
                ).scalars()
            )
            - found
        )
        found |= frontier
    return found


def _live_access_tokens(conn: Connection, which) -> tuple[list[str], int]:
    """The hashes of the live access tokens among `which`, and the latest of their expiries:
    what a resource server may still accept, so what a revocation event must name."""
    rows = conn.execute(
        select(tokens.c.token_hash, tokens.c.expires_at).where(
            which,
            tokens.c.kind == "access",
            tokens.c.revoked_at.is_(None),
            tokens.c.expires_at > now(),
        )
    ).all()
    return [row.token_hash for row in rows], max((row.expires_at for row in rows), default=0)


def revocation_facts(
    kind: str,
    subject: str | None,
    family: str | None,
    hashes: list[str],
    reason: str,
    by: str,
) -> dict:
    """What a revocation event records (security_event_tokens.py makes the SET of it):
    `kind` session (a family), user (every family of one user) or tokens (single access
    tokens); `by` is CAEP's initiating_entity."""
    return {
        "kind": kind,
        "subject": subject,
        "family": family,
        "tokens": hashes,
        "reason": reason,
        "by": by,
        "at": time.time(),
    }


class TokenStore:
    def __init__(self, db: Database, events: SecurityEvents):
        self.db = db
        self.events = events
        self.replies = RefreshReplies(db)

    def save_family(self, family: TokenFamily, issued: list[IssuedToken]) -> None:
        """A new family and its tokens (client_credentials): new rows only, independent of
        any other write, so committed together with whatever else is waiting, on PostgreSQL
        too (Database.grouped_inserts)."""
        self.db.grouped_inserts(family_inserts(family, issued))

    def save_exchanged(
        self,
        subject: TokenRecord,
        family: TokenFamily,
        issued: list[IssuedToken],
        actors: tuple[str, ...],
    ) -> bool:
        """Store a token exchanged for `subject` in the subject's family, atomically with
        checking that the family and the subject token are still live; False otherwise."""

        def store(conn: Connection) -> bool:
            if not _lock_family(conn, subject.family_id):
                return False
            live = conn.execute(
                select(tokens.c.token_hash).where(
                    tokens.c.token_hash == subject.token_hash, tokens.c.revoked_at.is_(None)
                )
            ).first()
            if live is None:
                return False
            _insert_tokens(conn, family, issued, now())
            conn.execute(
                insert(token_exchanges),
                [
                    {
                        "token_hash": secret_hash(token.value),
                        "subject_hash": subject.token_hash,
                        "actors": json.dumps(actors),
                    }
                    for token in issued
                ],
            )
            return True

        return self.db.transaction(store)

    def find(self, value: str, kind: str | None = None) -> TokenRecord | None:
        """The token stored under the hash of `value` (one indexed read; on SQLite cheap
        enough for the event loop, see Database.reads_inline)."""
        params = {"token_hash": secret_hash(value), "kind": kind}
        return _token_record(self.db.read_first(FIND_TOKEN_OF_KIND if kind else FIND_TOKEN, params))

    async def find_async(self, value: str) -> TokenRecord | None:
        """find, awaited on the event loop (Database.read_by_key_async)."""
        return _token_record(
            await self.db.read_by_key_async(
                FIND_TOKEN, FIND_TOKENS, "token_hash", secret_hash(value)
            )
        )

    def rotate_refresh_token(
        self,
        old: TokenRecord,
        family: TokenFamily,
        issued: list[IssuedToken],
        answer: dict | None = None,
        *,
        presented: str = "",
        grace: int = 0,
    ) -> bool:
        """Spend the refresh token and store its successors, atomically; with a grace,
        also the answer, sealed under the presented token (refresh_replies.py).

        False when it was spent or revoked already: the caller then revokes the family
        (unless the grace gives the same answer again). The family row is locked first.
        """
        sealed = self.replies.seal(presented, answer) if answer and grace > 0 else None

        def rotate(conn: Connection) -> bool:
            if not _lock_family(conn, old.family_id):
                return False
            spent = prebuilt.execute(conn, SPEND_TOKEN, {"spent": old.token_hash, "at": now()})
            if not spent:
                return False
            _insert_tokens(conn, family, issued, now())
            if sealed is not None:
                self.replies.keep(conn, old.token_hash, old.client_id, answer, sealed, grace)
            return True

        # Each rotation is decided by its own UPDATEs, so it may share a commit (grouped).
        return self.db.grouped(rotate)

    def revoke_family(self, family_id: str, reason: str = "revoked", by: str = "system") -> int:
        """Revoke a family and every token in it; returns how many tokens were live. The
        event telling resource servers is appended in the same transaction."""
        return self.db.transaction(
            lambda conn: self._revoke_families(conn, [family_id], reason, by, whole_user=None)
        )

    def _revoke_families(
        self,
        conn: Connection,
        family_ids: list[str],
        reason: str,
        by: str,
        *,
        whole_user: str | None,
    ) -> int:
        """Revoke the families and their tokens; one event for them all: each family's own
        (CAEP session-revoked), or the user's (RISC sessions-revoked) when `whole_user`."""
        stamp = now()
        revoked, hashes, keep_until, subject = 0, [], 0, whole_user
        for family_id in family_ids:
            _lock_family(conn, family_id)
            family = conn.execute(
                select(token_families.c.username, token_families.c.client_id).where(
                    token_families.c.grant_id == family_id
                )
            ).first()
            found, latest = _live_access_tokens(conn, tokens.c.grant_id == family_id)
            hashes += found
            keep_until = max(keep_until, latest)
            conn.execute(
                update(token_families)
                .where(
                    token_families.c.grant_id == family_id, token_families.c.revoked_at.is_(None)
                )
                .values(revoked_at=stamp)
            )
            revoked += conn.execute(
                update(tokens)
                .where(tokens.c.grant_id == family_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=stamp)
            ).rowcount
            if family is not None and whole_user is None:
                subject = family.username or family.client_id
        if revoked:
            kind, family = ("user", None) if whole_user else ("session", family_ids[0])
            facts = revocation_facts(kind, subject, family, hashes, reason, by)
            self.events.append(conn, facts, keep_until)
        return revoked

    def revoke(self, token: TokenRecord, reason: str = "token revoked", by: str = "user") -> None:
        """RFC 7009: an access token with the tokens exchanged for it (RFC 8693: they act
        within its grant); a refresh token takes its whole family with it."""
        if token.kind == "refresh":
            self.revoke_family(token.family_id, reason, by)
            return
        with self.db.write() as conn:
            _lock_family(conn, token.family_id)
            revoked = _with_exchanged_descendants(conn, token.token_hash)
            hashes, keep_until = _live_access_tokens(conn, tokens.c.token_hash.in_(revoked))
            conn.execute(
                update(tokens)
                .where(tokens.c.token_hash.in_(revoked), tokens.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )
            if hashes:
                subject = token.username or token.client_id
                facts = revocation_facts("tokens", subject, token.family_id, hashes, reason, by)
                self.events.append(conn, facts, keep_until)

    # -- administration (for resource servers) -------------------------------------------

    def live_families(self) -> list[dict]:
        """Families of users that still hold a live token (the admin API calls them grants)."""
        stamp = now()
        live = (
            select(tokens.c.grant_id)
            .where(tokens.c.revoked_at.is_(None), tokens.c.expires_at > stamp)
            .where(tokens.c.used_at.is_(None))
        )
        query = (
            select(token_families)
            .where(token_families.c.revoked_at.is_(None), token_families.c.username.is_not(None))
            .where(token_families.c.grant_id.in_(live))
            .order_by(token_families.c.created_at)
        )
        with self.db.engine.connect() as conn:
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
        """Revoke every live family of one user, in one transaction with one event; returns
        how many tokens were live."""
        with self.db.write() as conn:
            family_ids = (
                conn.execute(
                    select(token_families.c.grant_id).where(
                        token_families.c.username == username,
                        token_families.c.revoked_at.is_(None),
                    )
                )
                .scalars()
                .all()
            )
            return self._revoke_families(
                conn, list(family_ids), "an administrator revoked the user", "admin",
                whole_user=username,
            )  # fmt: skip
