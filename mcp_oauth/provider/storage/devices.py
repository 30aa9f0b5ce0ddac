"""Device codes (RFC 8628): handed out, decided once by the user, polled, redeemed once."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert, select, update

from mcp_oauth.provider.hashed_secrets import secret_hash
from mcp_oauth.provider.records import DeviceRecord, IssuedToken, TokenFamily
from mcp_oauth.provider.storage.database import Database, now, record_from_row
from mcp_oauth.provider.storage.schema import device_codes
from mcp_oauth.provider.storage.tokens import insert_family


def _device_record(row: Any) -> DeviceRecord:
    return record_from_row(DeviceRecord, row, approved_scope="granted_scope")


class DeviceStore:
    def __init__(self, db: Database):
        self.db = db

    def save(
        self,
        device_code: str,
        user_code: str,
        client_id: str,
        scope: str,
        resource: str | None,
        expires_in: int,
        interval: int,
    ) -> None:
        with self.db.write() as conn:
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

    def find_by_user_code(self, user_code: str) -> DeviceRecord | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(device_codes).where(device_codes.c.user_code == user_code)
            ).first()
        return _device_record(row) if row else None

    def decide(self, user_code: str, username: str, approved_scope: str, approved: bool) -> bool:
        """Record the user's decision once; False if the code was decided or expired."""
        with self.db.write() as conn:
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
                        granted_scope=approved_scope,
                        decision="approved" if approved else "denied",
                    )
                ).rowcount
            )

    def poll(self, device_code: str) -> tuple[DeviceRecord, bool] | None:
        """The device code and whether it was polled faster than its interval (slow_down).

        Each poll is recorded; a poll that comes too early raises the interval by 5 s for
        this and all later polls, as RFC 8628 §3.5 asks.
        """
        code_hash = secret_hash(device_code)
        stamp = time.time()
        with self.db.write() as conn:
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
        record = _device_record(row)
        record.interval = interval
        return record, too_fast

    def redeem(self, record: DeviceRecord, family: TokenFamily, issued: list[IssuedToken]) -> bool:
        """Mark the approved device code used and store its tokens, atomically; False if it
        was used already."""
        with self.db.write() as conn:
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
            insert_family(conn, family, issued)
            return True
