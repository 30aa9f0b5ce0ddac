"""The resource server's own data: per-user records and notes (SQLAlchemy 2 Core, SQLite).

Every read and write takes the owner as its first argument and filters on it in SQL, so one
user can neither see nor delete another's rows: a note of someone else is "not found",
exactly like a note that never existed. Owners are `user:<subject>` or `client:<client id>`
(caller.py), so a client acting for itself never shares a user's rows, whatever its id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, delete, insert, select
from sqlalchemy import update as sql_update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from mcp_oauth.common.sql import create_storage_engine

metadata = MetaData()

records = Table(
    "records",
    metadata,
    Column("owner", String(255), primary_key=True),
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", String(32), nullable=False),
)

notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("owner", String(255), nullable=False, index=True),
    Column("text", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
    sqlite_autoincrement=True,  # a deleted note's id is never handed out again
)

migrations = Table("migrations", metadata, Column("name", String(64), primary_key=True))
"""Which one-time data migrations this database has had, by name."""

OWNER_KINDS = "owner-kinds"
"""The migration that gave every owner its kind (`user:` or `client:`)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ResourceStore:
    """Records and notes, each call its own transaction, always scoped to one owner."""

    def __init__(self, url: str):
        self.url = make_url(url)
        self.engine = create_storage_engine(url)

    def create_tables(self) -> None:
        """Create the tables (and the SQLite file's directory) if they do not exist yet."""
        if self.url.get_backend_name() == "sqlite" and self.url.database:
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        metadata.create_all(self.engine)
        self.mark_legacy_owners_as_users()

    def mark_legacy_owners_as_users(self) -> None:
        """Once per database: rows written before owners had a kind belong to users (a
        client without a `sub` was already filed as `client:<id>`). A client-credentials
        caller's old rows were filed under its bare id too and cannot be told apart: they
        become those of a user with that name, as they were readable before."""
        with self.engine.connect().execution_options(write=True) as conn:
            try:
                with conn.begin():
                    conn.execute(insert(migrations).values(name=OWNER_KINDS))
                    for table in (records, notes):
                        legacy = ~table.c.owner.startswith("client:", autoescape=True)
                        kinded = "user:" + table.c.owner
                        conn.execute(sql_update(table).where(legacy).values(owner=kinded))
            except IntegrityError:
                pass  # done before, or by another replica starting at the same time

    def write_record(self, owner: str, key: str, value: str) -> dict[str, Any]:
        """Create or replace the owner's record `key`."""
        row = {"owner": owner, "key": key, "value": value, "updated_at": _now()}
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            match = (records.c.owner == owner) & (records.c.key == key)
            if not conn.execute(sql_update(records).where(match).values(row)).rowcount:
                conn.execute(insert(records).values(row))
        return _record(row)

    def read_records(self, owner: str, key: str | None = None) -> list[dict[str, Any]]:
        """The owner's records, or just the one named `key` (empty if there is none)."""
        query = select(records).where(records.c.owner == owner).order_by(records.c.key)
        if key is not None:
            query = query.where(records.c.key == key)
        with self.engine.connect() as conn:
            return [_record(row._asdict()) for row in conn.execute(query)]

    def save_note(self, owner: str, text: str) -> dict[str, Any]:
        row = {"owner": owner, "text": text, "created_at": _now()}
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            note_id = conn.execute(insert(notes).values(row)).inserted_primary_key[0]
        return _note({"id": note_id, **row})

    def list_notes(self, owner: str) -> list[dict[str, Any]]:
        query = select(notes).where(notes.c.owner == owner).order_by(notes.c.id)
        with self.engine.connect() as conn:
            return [_note(row._asdict()) for row in conn.execute(query)]

    def delete_note(self, owner: str, note_id: int) -> bool:
        """Delete the owner's note; False when the owner has no note with that id."""
        match = (notes.c.owner == owner) & (notes.c.id == note_id)
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            return bool(conn.execute(delete(notes).where(match)).rowcount)


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return {"key": row["key"], "value": row["value"], "updated_at": row["updated_at"]}


def _note(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "text": row["text"], "created_at": row["created_at"]}
