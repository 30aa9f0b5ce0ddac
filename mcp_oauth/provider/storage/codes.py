"""Authorization codes (RFC 6749 §4.1): stored by hash, redeemed once.

A code is redeemed by an UPDATE that only matches an unused row, in the same transaction
that stores its token family, so two replicas racing on one code get exactly one winner.
"""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select, update

from mcp_oauth.provider.hashed_secrets import secret_hash
from mcp_oauth.provider.records import CodeRecord, IssuedToken, TokenFamily
from mcp_oauth.provider.storage import prebuilt
from mcp_oauth.provider.storage.database import (
    Database,
    columns_from_record,
    now,
    record_from_row,
)
from mcp_oauth.provider.storage.schema import authorization_codes
from mcp_oauth.provider.storage.tokens import TokenStore, insert_family

# Prebuilt, bound per request, read with Database.read_first (so also on the event loop).
FIND_CODE = select(authorization_codes).where(
    authorization_codes.c.code_hash == bindparam("code_hash")
)
AUTH_TIME_OF_GRANT = select(authorization_codes.c.auth_time).where(  # one code per family
    authorization_codes.c.grant_id == bindparam("family")
)
CLAIM_CODE = (
    update(authorization_codes)
    .where(
        authorization_codes.c.code_hash == bindparam("claimed"),
        authorization_codes.c.used_at.is_(None),
    )
    .values(used_at=bindparam("at"), grant_id=bindparam("family"))
)


class CodeStore:
    def __init__(self, db: Database, tokens: TokenStore):
        self.db = db
        self.tokens = tokens

    def save(self, code: str, record: CodeRecord) -> None:
        with self.db.write() as conn:
            conn.execute(
                insert(authorization_codes).values(
                    {**columns_from_record(record), "code_hash": secret_hash(code)}
                )
            )

    def find(self, code: str) -> tuple[CodeRecord, bool] | None:
        """The code's record and whether it was already used, or None if it never existed."""
        row = self.db.read_first(FIND_CODE, {"code_hash": secret_hash(code)})
        if row is None:
            return None
        return record_from_row(CodeRecord, row), row["used_at"] is not None

    def nonce_used(self, client_id: str, nonce: str) -> bool:
        """Whether this client already sent this OpenID Connect nonce with a code (OIDC Core
        §15.5.2: a nonce is used once)."""
        query = select(authorization_codes.c.code_hash).where(
            authorization_codes.c.client_id == client_id, authorization_codes.c.nonce == nonce
        )
        with self.db.engine.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def auth_time_of_grant(self, family_id: str) -> int | None:
        """When the person signed in for the code that started this token family (OIDC Core
        §12.2: a refreshed ID token keeps the original auth_time); None for a family that
        came from no code. A redeemed code is kept while its family has tokens (janitor.py)."""
        row = self.db.read_first(AUTH_TIME_OF_GRANT, {"family": family_id})
        return None if row is None else row["auth_time"]

    def redeem(self, code: CodeRecord, family: TokenFamily, issued: list[IssuedToken]) -> bool:
        """Mark the code used and store its tokens, atomically; False if it was used already."""

        def claim(conn) -> bool:
            params = {"claimed": code.code_hash, "at": now(), "family": family.family_id}
            if not prebuilt.execute(conn, CLAIM_CODE, params):
                return False
            insert_family(conn, family, issued)
            return True

        # Decided by its own UPDATE, so it may share a commit (Database.grouped).
        return self.db.grouped(claim)

    def revoke_tokens_of(self, code: CodeRecord) -> None:
        """A used code was presented again: revoke every token issued from it (RFC 6749 §4.1.2)."""
        row = self.db.read_first(FIND_CODE, {"code_hash": code.code_hash})
        family_id = None if row is None else row["grant_id"]
        if family_id:
            self.tokens.revoke_family(family_id, "authorization code replayed", "policy")
