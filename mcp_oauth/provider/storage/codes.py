"""Authorization codes (RFC 6749 §4.1): stored by hash, redeemed once.

A code is redeemed by an UPDATE that only matches an unused row, in the same transaction
that stores its token family, so two replicas racing on one code get exactly one winner.
"""

from __future__ import annotations

from sqlalchemy import insert, select, update

from mcp_oauth.provider.hashed_secrets import secret_hash
from mcp_oauth.provider.records import CodeRecord, IssuedToken, TokenFamily
from mcp_oauth.provider.storage.database import Database, now
from mcp_oauth.provider.storage.schema import authorization_codes
from mcp_oauth.provider.storage.tokens import TokenStore, insert_family


class CodeStore:
    def __init__(self, db: Database, tokens: TokenStore):
        self.db = db
        self.tokens = tokens

    def save(self, code: str, record: CodeRecord) -> None:
        with self.db.write() as conn:
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

    def find(self, code: str) -> tuple[CodeRecord, bool] | None:
        """The code's record and whether it was already used, or None if it never existed."""
        with self.db.engine.connect() as conn:
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

    def redeem(self, code: CodeRecord, family: TokenFamily, issued: list[IssuedToken]) -> bool:
        """Mark the code used and store its tokens, atomically; False if it was used already."""
        with self.db.write() as conn:
            claimed = conn.execute(
                update(authorization_codes)
                .where(
                    authorization_codes.c.code_hash == code.code_hash,
                    authorization_codes.c.used_at.is_(None),
                )
                .values(used_at=now(), grant_id=family.family_id)
            ).rowcount
            if not claimed:
                return False
            insert_family(conn, family, issued)
            return True

    def revoke_tokens_of(self, code: CodeRecord) -> None:
        """A used code was presented again: revoke every token issued from it (RFC 6749 §4.1.2)."""
        with self.db.engine.connect() as conn:
            family_id = conn.execute(
                select(authorization_codes.c.grant_id).where(
                    authorization_codes.c.code_hash == code.code_hash
                )
            ).scalar()
        if family_id:
            self.tokens.revoke_family(family_id)
