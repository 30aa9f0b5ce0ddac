"""Token families and their tokens: stored by hash, rotated and revoked by the database.

A refresh token is rotated by an UPDATE that only matches an unspent row, in the same
transaction that stores its successors, so two replicas racing on one refresh token get
exactly one winner. Revoking a family revokes every token in it.
"""

from __future__ import annotations

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
from mcp_oauth.provider.storage.schema import token_families, tokens


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


class TokenStore:
    def __init__(self, db: Database):
        self.db = db

    def save_family(self, family: TokenFamily, issued: list[IssuedToken]) -> None:
        with self.db.write() as conn:
            insert_family(conn, family, issued)

    def find(self, value: str, kind: str | None = None) -> TokenRecord | None:
        query = select(tokens).where(tokens.c.token_hash == secret_hash(value))
        if kind:
            query = query.where(tokens.c.kind == kind)
        with self.db.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return record_from_row(TokenRecord, row, family_id="grant_id")

    def rotate_refresh_token(
        self, old: TokenRecord, family: TokenFamily, issued: list[IssuedToken]
    ) -> bool:
        """Spend the refresh token and store its successors, atomically.

        False when it was spent or revoked already: the caller then revokes the family.
        The family row is locked first, so a concurrent revocation of the family either
        happens before (and this fails) or after (and also revokes what this stores).
        """
        with self.db.write() as conn:
            live_family = conn.execute(
                update(token_families)
                .where(
                    token_families.c.grant_id == old.family_id,
                    token_families.c.revoked_at.is_(None),
                )
                .values(scope=token_families.c.scope)
            ).rowcount
            if not live_family:
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
        """RFC 7009: an access token alone; a refresh token takes its whole family with it."""
        if token.kind == "refresh":
            self.revoke_family(token.family_id)
            return
        with self.db.write() as conn:
            conn.execute(
                update(tokens)
                .where(tokens.c.token_hash == token.token_hash, tokens.c.revoked_at.is_(None))
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
