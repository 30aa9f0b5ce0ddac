"""The floor of a durable client_credentials token in this stack: the least such an endpoint
can do, served by uvicorn exactly as the provider is (one process, no access log).

Basic client authentication against one cached SHA-256, a token minted and its hash stored
with its family in the provider's own tables (storage/schema.py: the same rows and indexes;
the family's id made as the provider makes it, records.new_family_id), the requests of one
event-loop turn committed together on the loop (SQLite WAL, synchronous=FULL: durable before
the answer, as the provider's), a JSON answer. No scope, resource or client policy, no error
pages, no middleware: what is left is Python, Starlette, uvicorn and SQLite's commit, so the
provider's client_credentials cannot beat it in one process.

    python bench/bare_durable_token.py --port P --database PATH --client-id ID --secret S
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import secrets
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl

import uvicorn
from sqlalchemy import create_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mcp_oauth.provider.records import new_family_id  # noqa: E402
from mcp_oauth.provider.storage.schema import metadata  # noqa: E402

INSERT_FAMILY = (
    "INSERT INTO grants (grant_id, client_id, username, scope, resource, actor, created_at)"
    " VALUES (?, ?, NULL, ?, ?, NULL, ?)"
)
INSERT_TOKEN = (
    "INSERT INTO tokens (token_hash, kind, grant_id, client_id, username, scope, resource,"
    " actor, issued_at, expires_at) VALUES (?, 'access', ?, ?, NULL, ?, ?, NULL, ?, ?)"
)
LIFETIME = 3600


class DurableTokens:
    """Tokens stored in batches: the rows queued in one turn of the event loop, one commit."""

    def __init__(self, path: str):
        metadata.create_all(create_engine(f"sqlite:///{path}"))
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.queued: list[tuple[tuple, tuple, asyncio.Future]] = []

    async def store(self, family: tuple, token: tuple) -> None:
        loop = asyncio.get_running_loop()
        if not self.queued:
            loop.call_soon(self.commit)
        done = loop.create_future()
        self.queued.append((family, token, done))
        await done

    def commit(self) -> None:
        batch, self.queued = self.queued, []
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(INSERT_FAMILY, [family for family, _, _ in batch])
        self.db.executemany(INSERT_TOKEN, [token for _, token, _ in batch])
        self.db.execute("COMMIT")
        for _, _, done in batch:
            done.set_result(None)


def build_app(tokens: DurableTokens, client_id: str, secret: str) -> Starlette:
    secret_hash = hashlib.sha256(secret.encode()).digest()

    async def token(request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        credentials = request.headers.get("authorization", "")[len("Basic ") :]
        presented, _, password = base64.b64decode(credentials).decode().partition(":")
        if presented != client_id or not hmac.compare_digest(
            hashlib.sha256(password.encode()).digest(), secret_hash
        ):
            return JSONResponse({"error": "invalid_client"}, 401)
        value, now, family_id = secrets.token_urlsafe(32), int(time.time()), new_family_id()
        scope, resource = form.get("scope", ""), form.get("resource")
        await tokens.store(
            (family_id, client_id, scope, resource, now),
            (hashlib.sha256(value.encode()).hexdigest(), family_id, client_id, scope, resource,
             now, now + LIFETIME),
        )  # fmt: skip
        answer = {"access_token": value, "token_type": "Bearer", "expires_in": LIFETIME}
        return JSONResponse(answer | {"scope": scope}, headers={"Cache-Control": "no-store"})

    async def ready(request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/token", token, methods=["POST"]), Route("/", ready)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    uvicorn.run(
        build_app(DurableTokens(args.database), args.client_id, args.secret),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
