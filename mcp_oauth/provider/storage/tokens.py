"""Token families and their tokens: stored by hash, rotated and revoked by the database.

A refresh token is rotated by an UPDATE that only matches an unspent row, in the same
transaction that stores its successors (and the sealed answer kept for the refresh grace),
so two replicas racing on one refresh token get exactly one winner. Revoking a family
revokes every token in it, exchanged tokens included; revoking an access token revokes the
tokens exchanged for it.
"""

from __future__ import annotations

import json

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from mcp_oauth.provider.hashed_secrets import secret_hash
from mcp_oauth.provider.records import IssuedToken, TokenFamily, TokenRecord
from mcp_oauth.provider.storage.database import (
    Database,
    columns_from_record,
    now,
    record_from_row,
)
from mcp_oauth.provider.storage.refresh_replies import RefreshReplies
from mcp_oauth.provider.storage.schema import token_exchanges, token_families, tokens


def insert_family(conn: Connection, family: TokenFamily, issued: list[IssuedToken]) -> None:
    """A new family and its first tokens, inside the caller's transaction (so spending a code
    or a device code and storing what it bought commit together)."""
    issued_at = now()
    conn.execute(
        insert(token_families).values(
            **columns_from_record(family, family_id="grant_id"), created_at=issued_at
        )
    )
    _insert_tokens(conn, family, issued, issued_at)


def _insert_tokens(
    conn: Connection, family: TokenFamily, issued: list[IssuedToken], issued_at: int
) -> None:
    conn.execute(
        insert(tokens),
        [
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
        ],
    )


def _lock_family(conn: Connection, family_id: str) -> bool:
    """Lock the family row for this transaction; False if the family is revoked. Whatever
    adds tokens to a family or revokes them takes this lock first, so a revocation either
    happens before (and the addition fails) or after (and also revokes what was added)."""
    return bool(
        conn.execute(
            update(token_families)
            .where(token_families.c.grant_id == family_id, token_families.c.revoked_at.is_(None))
            .values(scope=token_families.c.scope)
        ).rowcount
    )


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


class TokenStore:
    def __init__(self, db: Database):
        self.db = db
        self.replies = RefreshReplies(db)

    def save_family(self, family: TokenFamily, issued: list[IssuedToken]) -> None:
        with self.db.write() as conn:
            insert_family(conn, family, issued)

    def save_exchanged(
        self,
        subject: TokenRecord,
        family: TokenFamily,
        issued: list[IssuedToken],
        actors: tuple[str, ...],
    ) -> bool:
        """Store a token exchanged for `subject` in the subject's family, atomically with
        checking that the family and the subject token are still live; False otherwise."""
        with self.db.write() as conn:
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

    def find(self, value: str, kind: str | None = None) -> TokenRecord | None:
        exchange = token_exchanges.c
        query = (
            select(tokens, exchange.subject_hash, exchange.actors.label("actor_chain"))
            .outerjoin(token_exchanges, exchange.token_hash == tokens.c.token_hash)
            .where(tokens.c.token_hash == secret_hash(value))
        )
        if kind:
            query = query.where(tokens.c.kind == kind)
        with self.db.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return record_from_row(TokenRecord, row, family_id="grant_id")

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
        with self.db.write() as conn:
            if not _lock_family(conn, old.family_id):
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
            _insert_tokens(conn, family, issued, now())
            if sealed is not None:
                self.replies.keep(conn, old.token_hash, old.client_id, answer, sealed, grace)
            return True

    def revoke_family(self, family_id: str) -> int:
        """Revoke a family and every token in it; returns how many tokens were live."""
        stamp = now()
        with self.db.write() as conn:
            conn.execute(
                update(token_families)
                .where(
                    token_families.c.grant_id == family_id, token_families.c.revoked_at.is_(None)
                )
                .values(revoked_at=stamp)
            )
            return conn.execute(
                update(tokens)
                .where(tokens.c.grant_id == family_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=stamp)
            ).rowcount

    def revoke(self, token: TokenRecord) -> None:
        """RFC 7009: an access token with the tokens exchanged for it (RFC 8693: they act
        within its grant); a refresh token takes its whole family with it."""
        if token.kind == "refresh":
            self.revoke_family(token.family_id)
            return
        with self.db.write() as conn:
            _lock_family(conn, token.family_id)
            revoked = _with_exchanged_descendants(conn, token.token_hash)
            conn.execute(
                update(tokens)
                .where(tokens.c.token_hash.in_(revoked), tokens.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )

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
        """Revoke every live family of one user; returns how many tokens were live."""
        with self.db.engine.connect() as conn:
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
        return sum(self.revoke_family(family_id) for family_id in family_ids)
