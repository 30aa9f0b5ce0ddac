#!/usr/bin/env python3
"""The authorization server: a small, real OAuth 2.0 provider for the MCP resource server.

Read top to bottom: settings, the accounts and clients from users.yaml, durable storage,
the Authlib server with its grants and endpoints (mcp_oauth/grants.py lists them), the
pages a person sees, the routes, and main().

    python oauth_provider.py                  # http://localhost:9000
    python oauth_provider.py hash-password    # print an argon2 hash for users.yaml
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn
from authlib.oauth2.rfc6749.errors import OAuth2Error
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mcp_oauth.provider.authorization_server import AuthorizationServer, ProviderConfig
from mcp_oauth.provider.http_hardening import HardeningMiddleware
from mcp_oauth.provider.pages import Pages, message_page
from mcp_oauth.provider.passwords import hash_password
from mcp_oauth.provider.storage import Store, new_secret
from mcp_oauth.provider.token_minter import TokenIssuer, TokenLifetimes
from mcp_oauth.provider.users_file import Resource, UsersFileError, load_users_file

log = logging.getLogger("oauth_provider")
HERE = Path(__file__).resolve().parent
STATIC = HERE / "mcp_oauth" / "provider" / "static"
SCOPES = ["read", "write", "admin"]


# -- settings: flags, with environment variables as their defaults ---------------------------


def parse_settings(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description="OAuth 2.0 authorization server for the MCP resource server.",
        epilog="Subcommand: 'hash-password' prints an argon2 hash to paste into users.yaml.",
    )
    parser.add_argument(
        "--host",
        default=env("OAUTH_HOST", "localhost"),
        help="interface to listen on (env OAUTH_HOST; default localhost)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env("OAUTH_PORT", "9000")),
        help="port to listen on (env OAUTH_PORT; default 9000)",
    )
    parser.add_argument(
        "--issuer",
        default=env("OAUTH_ISSUER"),
        help="issuer URL exactly as clients must see it, no trailing slash "
        "(env OAUTH_ISSUER; default http://localhost:<port>)",
    )
    parser.add_argument(
        "--database-url",
        default=env("OAUTH_DATABASE_URL"),
        help="SQLAlchemy URL: sqlite:///path.db (default data/oauth.db) or "
        "postgresql+psycopg://… to share state between replicas "
        "(env OAUTH_DATABASE_URL)",
    )
    parser.add_argument(
        "--users",
        type=Path,
        default=Path(env("OAUTH_USERS_FILE", HERE / "users.yaml")),
        help="accounts, clients and resources (env OAUTH_USERS_FILE; default users.yaml)",
    )
    parser.add_argument(
        "--resource",
        action="append",
        default=[],
        help="another resource URI (RFC 8707) tokens may be issued for; "
        "repeatable (env OAUTH_RESOURCES, comma separated)",
    )
    parser.add_argument(
        "--access-token-ttl",
        type=int,
        default=int(env("OAUTH_ACCESS_TOKEN_TTL", "3600")),
        help="access token lifetime in seconds (env OAUTH_ACCESS_TOKEN_TTL; default 3600)",
    )
    parser.add_argument(
        "--refresh-token-ttl",
        type=int,
        default=int(env("OAUTH_REFRESH_TOKEN_TTL", str(30 * 24 * 3600))),
        help="refresh token lifetime in seconds (env OAUTH_REFRESH_TOKEN_TTL; default 30 days)",
    )
    parser.add_argument(
        "--access-token-format",
        choices=["opaque", "jwt"],
        default=env("OAUTH_ACCESS_TOKEN_FORMAT", "opaque"),
        help="opaque random tokens, or RFC 9068 JWTs signed with the key at "
        "/jwks.json (env OAUTH_ACCESS_TOKEN_FORMAT; default opaque)",
    )
    parser.add_argument(
        "--log-level",
        default=env("OAUTH_LOG_LEVEL", "info"),
        help="debug, info, warning (env OAUTH_LOG_LEVEL; default info)",
    )
    settings = parser.parse_args(argv)
    settings.issuer = (settings.issuer or f"http://localhost:{settings.port}").rstrip("/")
    settings.database_url = settings.database_url or f"sqlite:///{HERE / 'data' / 'oauth.db'}"
    settings.resource += [uri for uri in env("OAUTH_RESOURCES", "").split(",") if uri.strip()]
    return settings


# -- the application ----------------------------------------------------------------------


def new_signing_key() -> str:
    return json.dumps(RSAKey.generate_key(2048, auto_kid=True).as_dict(private=True))


def build_app(settings: argparse.Namespace) -> Starlette:
    users = load_users_file(settings.users, settings.resource)
    # The provider's own userinfo endpoint is a resource too: the downstream API that the
    # resource server calls on behalf of a user (RFC 8693 token exchange).
    userinfo_url = f"{settings.issuer}/userinfo"
    users.resources[userinfo_url] = Resource(
        userinfo_url, "Profile API (userinfo)", frozenset({"read"})
    )
    store = Store(settings.database_url)
    for client in users.clients:
        store.save_client(
            client.client_id,
            client.client_secret,
            {
                "client_name": client.client_name,
                "redirect_uris": client.redirect_uris,
                "grant_types": client.grant_types,
                "response_types": ["code"] if "authorization_code" in client.grant_types else [],
                "scope": client.scope,
                "token_endpoint_auth_method": client.token_endpoint_auth_method,
            },
            resource_server=client.resource_server,
            may_exchange_tokens=client.may_exchange_tokens,
            preregistered=True,
        )
    # Keys live in the database so that restarts and replicas agree on them.
    signing_key = RSAKey.import_key(
        json.loads(store.server_secret("jwt_signing_key", new_signing_key))
    )
    session_secret = store.server_secret("session_secret", new_secret)
    issuer = TokenIssuer(
        settings.issuer,
        TokenLifetimes(access=settings.access_token_ttl, refresh=settings.refresh_token_ttl),
        settings.access_token_format,
        signing_key,
    )
    server = AuthorizationServer(
        ProviderConfig(settings.issuer, users.accounts, users.resources, SCOPES), store, issuer
    )
    pages = Pages(server)

    async def metadata(request: Request) -> Response:
        return JSONResponse(server.metadata)

    async def jwks(request: Request) -> Response:
        return JSONResponse(issuer.public_jwks())

    async def userinfo(request: Request) -> Response:
        """A downstream API: it accepts only access tokens whose audience is itself, so a
        token meant for the MCP server is refused here and must be exchanged first."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        record = None
        if scheme.lower() == "bearer" and token.strip():
            record = await run_in_threadpool(store.find_token, token.strip(), "access")
        if record is None or record.is_revoked() or record.is_expired():
            problem = "the token is not active"
        elif record.resource != userinfo_url:
            problem = f"the token's audience is not {userinfo_url}"
        else:
            problem = None
        if problem:
            challenge = f'Bearer error="invalid_token", error_description="{problem}"'
            return JSONResponse(
                {"error": "invalid_token", "error_description": problem},
                401,
                {"WWW-Authenticate": challenge},
            )
        account = users.accounts.get(record.username or "")
        body = {
            "sub": record.username or record.client_id,
            "scope": record.scope,
            "client_id": record.client_id,
        }
        if account:
            body.update(
                username=account.username, name=account.name, allowed_scopes=sorted(account.scopes)
            )
        if record.actor:
            body["act"] = {"sub": record.actor}
        return JSONResponse(body)

    async def admin_grants(request: Request) -> Response:
        """Who holds live grants: for resource-server clients (an admin tool), authenticated."""
        try:
            oauth_request = await server.oauth2_request(request)
            await run_in_threadpool(server.authenticate_resource_server, oauth_request)
        except OAuth2Error as error:
            return server.error_response(error)
        return JSONResponse({"grants": await run_in_threadpool(store.active_grants)})

    async def admin_revoke_user(request: Request) -> Response:
        """Revoke every grant of one user: for resource servers, client-authenticated."""
        try:
            oauth_request = await server.oauth2_request(request)
            await run_in_threadpool(server.authenticate_resource_server, oauth_request)
        except OAuth2Error as error:
            return server.error_response(error)
        username = oauth_request.payload.data.get("username", "")
        if username not in users.accounts:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "unknown username"}, 400
            )
        revoked = await run_in_threadpool(store.revoke_user, username)
        log.info("admin API: revoked %d tokens of %s", revoked, username)
        return JSONResponse({"username": username, "revoked": revoked})

    async def not_found(request: Request, exc: Exception) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return message_page(request, 404, "Not found", "There is no page here.")
        return JSONResponse({"error": "not_found"}, 404)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            {"error": "invalid_request", "error_description": "method not allowed"}, 405
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "server_error"}, 500)

    issuer_path = urlsplit(settings.issuer).path
    well_known = ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]
    if issuer_path:  # RFC 8414 §3.1: the issuer's path goes after the well-known segment
        well_known += [
            f"/.well-known/oauth-authorization-server{issuer_path}",
            f"{issuer_path}/.well-known/openid-configuration",
        ]
    routes = [
        *(Route(path, metadata) for path in well_known),
        Route("/jwks.json", jwks),
        Route("/userinfo", userinfo, methods=["GET", "POST"]),
        Route("/authorize", pages.authorize, methods=["GET", "POST"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/device", pages.device, methods=["GET", "POST"]),
        Route("/token", server.token_endpoint, methods=["POST"]),
        Route("/introspect", server.introspection_endpoint, methods=["POST"]),
        Route("/revoke", server.revocation_endpoint, methods=["POST"]),
        Route("/register", server.registration_endpoint, methods=["POST"]),
        Route("/device_authorization", server.device_authorization_endpoint, methods=["POST"]),
        Route("/admin/grants", admin_grants, methods=["GET"]),
        Route("/admin/revoke-user", admin_revoke_user, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(HardeningMiddleware),
            Middleware(
                SessionMiddleware,
                secret_key=session_secret,
                session_cookie="oauth_session",
                max_age=8 * 3600,
                same_site="lax",
                https_only=settings.issuer.startswith("https://"),
            ),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
    )


# -- main ---------------------------------------------------------------------------------


def print_password_hash() -> None:
    password = getpass.getpass("New password: ")
    if password != getpass.getpass("Again: "):
        sys.exit("error: the two passwords differ; nothing printed")
    print(hash_password(password))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hash-password"]:
        print_password_hash()
        return
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    try:
        app = build_app(settings)
    except UsersFileError as exc:
        sys.exit(f"error: {exc}")
    log.info(
        "issuer %s, storage %s, access tokens %s",
        settings.issuer,
        settings.database_url.split("://")[0],
        settings.access_token_format,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
