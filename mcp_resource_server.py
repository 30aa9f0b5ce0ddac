"""MCP resource server: tools guarded by OAuth 2.0 scopes, tokens checked with the provider.

    python mcp_resource_server.py            # MCP over streamable HTTP at http://localhost:8000/mcp

A client that calls a protected tool without a token gets a 401 whose WWW-Authenticate header
points at this server's protected resource metadata (RFC 9728), which names the authorization
server to log in at. With a token, each request is checked the way that server allows:
introspection (cached) when it offers it and this server has client credentials, otherwise
local JWT validation against its key set (Entra ID, or any provider via MCP_TOKEN_VALIDATION).
A token the provider revokes is refused within a second when the provider publishes its
revocations as security events (Shared Signals), which this server receives in the background;
cached answers then live 300 s instead of 60. Each tool call is checked against the scope the
tool needs: a missing scope is a 403
insufficient_scope the client can step up from. One tool calls a downstream API on the user's
behalf with a token exchanged for it (RFC 8693, or Entra's On-Behalf-Of grant).

To add a tool, write a function in the "Tools" section below and put `@tool(scope=...)` on it:
an OAuth scope from SCOPES, SIGNED_IN (any valid token) or PUBLIC (no token at all).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
import uvicorn
from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from mcp_oauth.resource_server.argument_errors import ShortArgumentErrors
from mcp_oauth.resource_server.caller import current_caller
from mcp_oauth.resource_server.fastmcp_internals import warm_state_store
from mcp_oauth.resource_server.gate import guard
from mcp_oauth.resource_server.introspection import IntrospectionVerifier
from mcp_oauth.resource_server.on_behalf_of import DownstreamError, OnBehalfOf
from mcp_oauth.resource_server.provider_discovery import Provider, ProviderError
from mcp_oauth.resource_server.revocation_stream import RevocationStream
from mcp_oauth.resource_server.revocations import Revocations
from mcp_oauth.resource_server.server_settings import (
    DEV_CLIENT_SECRET,
    ENVIRONMENT_HELP,
    Settings,
)
from mcp_oauth.resource_server.store import ResourceStore
from mcp_oauth.resource_server.tool_scopes import PUBLIC, SIGNED_IN, ToolScopes
from mcp_oauth.resource_server.validation_settings import ConfigurationError
from mcp_oauth.resource_server.verifier_choice import ChosenVerifier

log = logging.getLogger("mcp_resource_server")

# --- Settings ----------------------------------------------------------------------------------

settings = Settings.from_env()

# --- The authorization server, the token verifier, our own data -------------------------------

# One HTTP client for every outgoing call, so connections are set up once and reused.
http = httpx.AsyncClient(timeout=httpx.Timeout(5.0))
provider = Provider(
    settings.provider_url,
    settings.client_id,
    settings.client_secret,
    http,
    metadata_url=settings.metadata_url,
)
# What the provider's security events revoked: refused before any cached answer is used.
revocations = Revocations()
verifier = ChosenVerifier(
    settings.validation,
    provider=provider,
    resource_url=settings.server_url,
    client_credentials=bool(settings.client_id and settings.client_secret),
    introspection=lambda: IntrospectionVerifier(
        provider,
        settings.server_url,
        cache_ttl=settings.cache_ttl_without_events,
        refusal_ttl=settings.refusal_ttl,
        cache_size=settings.cache_size,
    ),
    revocations=revocations,
    kept_answers=settings.cache_size,
)
# The provider's revocation events, received in the background: while they arrive, accepted
# answers are kept for the longer TTL; when events may have been missed, only the short one.
revocation_events = RevocationStream(
    provider,
    settings.client_id,
    settings.client_secret,
    revocations,
    healthy=lambda: verifier.keep_answers(settings.cache_ttl_with_events),
    fall_back=lambda: verifier.keep_answers(0),
    evict=verifier.evict,
)
downstream = OnBehalfOf(
    provider,
    url=settings.downstream_url,
    audience=settings.downstream_resource,
    entra=settings.validation.entra,
)
store = ResourceStore(settings.database_url)


@asynccontextmanager
async def lifespan(_server: FastMCP) -> AsyncIterator[None]:
    if settings.client_secret == DEV_CLIENT_SECRET:
        log.warning("MCP_RS_CLIENT_SECRET is not set: using the development default secret")
    store.create_tables()
    await scopes.check_complete()
    warm_state_store(mcp)  # not in the first user's call
    receiving = None
    if settings.receives_revocation_events:
        receiving = asyncio.create_task(revocation_events.run())
    else:
        revocation_events.state = "off"
    # What start-up made lives as long as the server: out of the collector's sight, a full
    # collection walks only what requests made (about a quarter of a tools/call's CPU before).
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if receiving:
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)
        log.info("Token verifier counters at shutdown: %s", verifier.metrics())
        await provider.aclose()
        await http.aclose()


mcp = FastMCP(
    "mcp-oauth resource server",
    instructions="Per-user records and notes, guarded by OAuth scopes read, write and admin.",
    lifespan=lifespan,
    mask_error_details=True,  # an unexpected exception reaches the client as a generic error
    middleware=[ShortArgumentErrors()],  # bad arguments: one short sentence each, no dump
)

# --- Tools, each with the scope it needs -------------------------------------------------------

SCOPES = {
    "read": "read your own records and notes",
    "write": "create, change and delete your own records and notes",
    "admin": "see who holds active grants, and revoke a user's tokens",
}
scopes = ToolScopes(mcp, SCOPES)
tool = scopes.tool

Key = Annotated[str, Field(min_length=1, max_length=100, description="Name of the record")]
Text = Annotated[str, Field(min_length=1, max_length=10_000)]
NoteId = Annotated[int, Field(ge=1, le=2**63 - 1, description="Id of the note")]  # SQLite's range
Username = Annotated[str, Field(min_length=1, max_length=255)]


@tool(scope=PUBLIC)
def public_info() -> dict[str, Any]:
    """What this server is and where to sign in; needs no token."""
    return {
        "server": mcp.name,
        "resource": settings.server_url,
        "authorization_server": settings.provider_url,
        "scopes": SCOPES,
        "tools": {entry["tool"]: entry["needs"] for entry in scopes.describe(granted=())},
    }


@tool(scope=SIGNED_IN)
def get_user_profile() -> dict[str, Any]:
    """Who you are according to your token: user, subject, scopes, client and expiry."""
    caller = current_caller()
    expires = caller.expires_at
    return {
        "username": caller.username,
        "subject": caller.subject,
        "scopes": sorted(caller.scopes),
        "client_id": caller.client_id,
        "token_expires_at": datetime.fromtimestamp(expires, UTC).isoformat() if expires else None,
        "token_expires_in": max(0, int(expires - time.time())) if expires else None,
    }


@tool(scope=SIGNED_IN)
def list_available_resources() -> dict[str, Any]:
    """Which tools your token's scopes let you call, and what the others would need."""
    caller = current_caller()
    return {"username": caller.username, "tools": scopes.describe(caller.scopes)}


@tool(scope="read")
def read_data(key: Key | None = None) -> dict[str, Any]:
    """Your stored records: all of them, or the one named `key`."""
    found = store.read_records(current_caller().owner, key)
    if key is not None and not found:
        raise ToolError(f"You have no record named {key!r}.")
    return {"records": found}


@tool(scope="write")
def write_data(key: Key, value: Text) -> dict[str, Any]:
    """Store `value` under `key` in your records, replacing what was there."""
    return {"saved": store.write_record(current_caller().owner, key, value)}


@tool(scope="write")
def save_user_note(text: Text) -> dict[str, Any]:
    """Save a note only you can see."""
    return {"saved": store.save_note(current_caller().owner, text)}


@tool(scope="read")
def get_user_notes() -> dict[str, Any]:
    """Your notes, oldest first."""
    return {"notes": store.list_notes(current_caller().owner)}


@tool(scope="write")
def delete_user_note(note_id: NoteId) -> dict[str, Any]:
    """Delete one of your notes by its id."""
    if not store.delete_note(current_caller().owner, note_id):
        raise ToolError(f"You have no note with id {note_id}.")
    return {"deleted": note_id}


@tool(scope="read")
async def get_downstream_profile() -> dict[str, Any]:
    """Your profile from the downstream API, fetched on your behalf.

    This server exchanges your token for one meant for that API (you stay the subject, this
    server is the actor); your own token is never sent to the API.
    """
    try:
        profile = await downstream.call(current_caller())
    except DownstreamError as exc:
        raise ToolError(str(exc)) from None
    return {"profile": profile}


@tool(scope="admin")
async def admin_operation(
    action: Literal["list_grants", "revoke_user"], username: Username | None = None
) -> dict[str, Any]:
    """List who holds active grants, or revoke every token of `username`.

    Done through the provider's admin API with this server's own credentials; the caller's
    token is never sent anywhere.
    """
    try:
        if action == "list_grants":
            grants = (await provider.active_grants()).get("grants", [])
            users = sorted({g["username"] for g in grants if g.get("username")})
            return {"users": users, "grants": grants}
        if not username:
            raise ToolError("revoke_user needs the username whose tokens to revoke.")
        return await provider.revoke_user(username)
    except ProviderError as exc:
        raise ToolError(f"Admin operation failed: {exc}") from None


# --- HTTP endpoints besides MCP ----------------------------------------------------------------


@mcp.custom_route("/metrics", methods=["GET"])
async def metrics(_request: Request) -> JSONResponse:
    """How tokens are checked, with its counters; the revocation event stream's state, lag
    and counters; and the token exchange counters."""
    return JSONResponse(
        {
            "token_verifier": verifier.metrics(),
            "revocation_events": revocation_events.metrics(),
            "on_behalf_of": downstream.metrics(),
        }
    )


def create_app() -> Starlette:
    """The ASGI app: stateless streamable HTTP, the OAuth gate around it, RFC 9728 metadata."""
    parts = urlsplit(settings.server_url)
    path = parts.path or "/"
    app = mcp.http_app(
        path=path,
        stateless_http=True,
        host_origin_protection="auto",
        allowed_hosts=[parts.netloc],
    )
    guard(
        app,
        path=path,
        resource=settings.server_url,
        verifier=verifier,
        tools=scopes,
        provider=provider,
        login_scope="read",
        resource_name=mcp.name,
    )
    return app


async def serve(config: uvicorn.Config) -> None:
    """Choose how to check tokens, then serve. Settings that allow no check stop the server
    with their fix (outside uvicorn's lifespan, which would bury it in a traceback); an
    unreachable provider does not: it is discovered on first need."""
    try:
        await verifier.choose()
    except ConfigurationError as exc:
        raise SystemExit(f"mcp_resource_server: cannot check bearer tokens: {exc}") from None
    except ProviderError:
        log.warning("Starting without the authorization server; will discover it on first need")
    await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="MCP resource server guarded by OAuth 2.0 scopes.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("MCP_HOST", "localhost"),
        help="interface to listen on (env MCP_HOST, default localhost)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("MCP_PORT", "8000")),
        help="port to listen on (env MCP_PORT, default 8000)",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("httpx", "mcp.server.streamable_http"):  # a line per request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    log.info("MCP endpoint %s, authorization server %s", settings.server_url, settings.provider_url)
    # No access log: a line per request costs CPU on the hot path; the server logs what matters.
    config = uvicorn.Config(create_app(), host=args.host, port=args.port, access_log=False)
    # uvicorn's own loop choice (uvloop when installed), as `uvicorn.run` would make it.
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve(config))


if __name__ == "__main__":
    main()
