#!/usr/bin/env python3
"""The authorization server: a small, real OAuth 2.0 provider for the MCP resource server.

Read top to bottom: the accounts and clients from users.yaml, durable storage, the Authlib
server and the grants and endpoints it supports, the routes (pages a person sees and the JSON
endpoints), the metadata derived from both, and main(), which reads the settings (the flags of
provider/settings.py).

    python oauth_provider.py                  # http://localhost:9000
    python oauth_provider.py hash-password    # print an argon2 hash for users.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from authlib.oauth2.rfc7591 import ClientMetadataClaims
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from mcp_oauth.common.security_events import SSF_CONFIGURATION_PATH
from mcp_oauth.provider.admin_api import AdminApi
from mcp_oauth.provider.authorization_server import AuthorizationServer
from mcp_oauth.provider.authorize_page import AuthorizePage
from mcp_oauth.provider.client_checks import LogoutMetadataClaims
from mcp_oauth.provider.client_documents import ClientDocuments
from mcp_oauth.provider.device_page import DevicePage
from mcp_oauth.provider.end_session import END_SESSION_PATH, EndSession, EndSessionPage
from mcp_oauth.provider.endpoints import (
    ClientRegistration,
    DeviceAuthorization,
    Introspection,
    RegistrationLimit,
    Revocation,
)
from mcp_oauth.provider.error_handlers import EXCEPTION_HANDLERS
from mcp_oauth.provider.event_stream import EventStream
from mcp_oauth.provider.event_wakeups import EventWakeups
from mcp_oauth.provider.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    DeviceCodeGrant,
    RefreshTokenGrant,
    ResourceIndicator,
    S256CodeChallenge,
    TokenExchangeGrant,
)
from mcp_oauth.provider.hashed_secrets import new_secret
from mcp_oauth.provider.http_hardening import HardeningMiddleware
from mcp_oauth.provider.identity import OpenIDCode, OpenIDRefresh
from mcp_oauth.provider.json_endpoints import JsonEndpoint, JsonRoutes
from mcp_oauth.provider.metadata import server_metadata, well_known_paths
from mcp_oauth.provider.passwords import print_password_hash, report_stale_hashes
from mcp_oauth.provider.serving import prepare_process, serve
from mcp_oauth.provider.settings import parse_settings
from mcp_oauth.provider.sign_in import SignIn
from mcp_oauth.provider.storage.janitor import Janitor, Retention
from mcp_oauth.provider.storage.sessions import SESSION_LIFETIME
from mcp_oauth.provider.storage.store import Store
from mcp_oauth.provider.token_minter import TokenLifetimes, TokenMinter
from mcp_oauth.provider.userinfo import PROFILE_API_PATH, ProfileApi, UserInfoEndpoint
from mcp_oauth.provider.users_file import Resource, UsersFile, UsersFileError, load_users_file

log = logging.getLogger("oauth_provider")
HERE = Path(__file__).resolve().parent
STATIC = HERE / "mcp_oauth" / "provider" / "static"


# -- users.yaml and storage ----------------------------------------------------------------


def load_users(settings: argparse.Namespace) -> UsersFile:
    """Accounts, clients and resources; the provider's own /api/profile is a resource too: the
    downstream API the resource server calls on behalf of a user (RFC 8693 token exchange)."""
    users = load_users_file(settings.users, settings.resource, settings.issuer)
    profile_url = f"{settings.issuer}{PROFILE_API_PATH}"
    users.resources[profile_url] = Resource(profile_url, "Profile API", frozenset({"read"}))
    return users


def open_store(settings: argparse.Namespace, users: UsersFile) -> Store:
    """The database, with the pre-registered clients of users.yaml synced into it."""
    store = Store(settings.database_url)
    for client in users.clients:
        store.clients.save(
            client.client_id,
            client.client_secret,
            {
                "client_name": client.client_name,
                "redirect_uris": client.redirect_uris,
                "post_logout_redirect_uris": client.post_logout_redirect_uris,
                "grant_types": client.grant_types,
                "response_types": ["code"] if "authorization_code" in client.grant_types else [],
                "scope": client.scope,
                "token_endpoint_auth_method": client.token_endpoint_auth_method,
                **({"exchange": client.exchange.as_metadata()} if client.exchange else {}),
            },
            resource_server=client.resource_server,
            may_exchange_tokens=client.may_exchange_tokens,
            preregistered=True,
        )
    return store


def new_signing_key() -> str:
    return json.dumps(RSAKey.generate_key(2048, auto_kid=True).as_dict(private=True))


def token_minter(settings: argparse.Namespace, store: Store) -> TokenMinter:
    # The signing key lives in the database so that restarts and replicas agree on it.
    signing_key = RSAKey.import_key(
        json.loads(store.server_secret("jwt_signing_key", new_signing_key))
    )
    return TokenMinter(
        settings.issuer,
        TokenLifetimes(
            settings.access_token_ttl, settings.refresh_token_ttl, settings.refresh_grace_seconds
        ),
        settings.access_token_format,
        signing_key,
    )


# -- the Authlib server: everything it supports, in one place ---------------------------------


def authorization_server(
    settings: argparse.Namespace, users: UsersFile, store: Store, minter: TokenMinter
) -> AuthorizationServer:
    """No implicit flow and no password grant exist here (RFC 9700 §2.1.2, §2.4). A client is
    registered (users.yaml, RFC 7591) or identified by its metadata document's URL."""
    server = AuthorizationServer(
        settings.issuer, users, store, minter, ClientDocuments(settings.cimd_allow_loopback)
    )
    # OpenID Connect: ID tokens at sign-in, and new ones when an openid grant is refreshed
    openid = OpenIDCode(settings.issuer, minter, store.codes)
    openid_refresh = OpenIDRefresh(settings.issuer, minter, store.codes)
    server.register_grant(
        AuthorizationCodeGrant, [S256CodeChallenge(required=True), ResourceIndicator(), openid]
    )
    server.register_grant(RefreshTokenGrant, [openid_refresh])
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(DeviceCodeGrant)
    server.register_grant(TokenExchangeGrant)
    server.register_endpoint(Introspection)
    server.register_endpoint(Revocation)
    # RFC 7591 metadata, and where a client may be sent after signing out (RP-Initiated Logout)
    server.register_endpoint(
        ClientRegistration(server, claims_classes=[ClientMetadataClaims, LogoutMetadataClaims])
    )
    server.register_endpoint(EndSession)  # OpenID Connect RP-Initiated Logout
    server.register_endpoint(DeviceAuthorization)
    return server


# -- routes: a route named like an RFC 8414 metadata key gives that key's URL -----------------


def routes(
    server: AuthorizationServer, settings: argparse.Namespace, sessions: list[Middleware]
) -> list[BaseRoute]:
    """`sessions` wraps the pages a person's browser uses (they read the session cookie,
    pages.py); the JSON endpoints, metadata and static files run without it."""
    sign_in = SignIn(server.accounts, server.store.login_throttle, server.store.sessions)
    admin = AdminApi(server)
    userinfo = UserInfoEndpoint(server.store.tokens, server.accounts)
    profile = ProfileApi(
        f"{server.issuer_url}{PROFILE_API_PATH}", server.store.tokens, server.accounts
    )
    events = EventStream(server)

    async def metadata(request: Request) -> Response:
        return JSONResponse(server.metadata)

    async def jwks(request: Request) -> Response:
        return JSONResponse(server.minter.public_jwks())

    return [
        # The busiest first: the router tries each route in turn.
        # ... served as plain ASGI apps, reached past the router (JsonRoutes, build_app):
        # every token request and introspection passes here.
        Route("/token", JsonEndpoint(server.token_endpoint), methods=["POST"]),
        Route("/introspect", JsonEndpoint(server.introspection_endpoint), methods=["POST"]),
        Route("/revoke", JsonEndpoint(server.revocation_endpoint), methods=["POST"]),
        *(Route(path, metadata) for path in well_known_paths(server.issuer_url)),
        Route("/jwks.json", jwks, name="jwks_uri"),
        Route("/userinfo", userinfo.serve, methods=["GET", "POST"], name="userinfo_endpoint"),
        Route(PROFILE_API_PATH, profile.serve, methods=["GET", "POST"]),
        Route(
            "/authorize",
            AuthorizePage(server).serve,
            methods=["GET", "POST"],
            name="authorization_endpoint",
            middleware=sessions,
        ),
        Route("/login", sign_in.login, methods=["POST"], middleware=sessions),
        Route("/logout", sign_in.logout, methods=["POST"], middleware=sessions),
        Route(
            END_SESSION_PATH,
            EndSessionPage(server, sign_in).serve,
            methods=["GET", "POST"],
            name="end_session_endpoint",
            middleware=sessions,
        ),
        Route("/device", DevicePage(server).serve, methods=["GET", "POST"], middleware=sessions),
        Route(
            "/register",
            RegistrationLimit(
                server.registration_endpoint,
                server.store.rate_limits,
                settings.registrations_per_hour,
            ).serve,
            methods=["POST"],
            name="registration_endpoint",
        ),
        Route("/device_authorization", server.device_authorization_endpoint, methods=["POST"]),
        Route("/admin/grants", admin.live_grants, methods=["GET"]),
        Route("/admin/revoke-user", admin.revoke_user, methods=["POST"]),
        # Revocations as security events for resource servers (Shared Signals, RFC 8936)
        Route(SSF_CONFIGURATION_PATH, events.serve_configuration),
        Route("/ssf/stream", events.serve_stream, methods=["GET", "POST", "DELETE"]),
        Route("/ssf/poll/{stream_id}", events.serve_poll, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


# -- the application ----------------------------------------------------------------------


def build_app(settings: argparse.Namespace) -> Starlette:
    users = load_users(settings)
    report_stale_hashes({name: a.password_hash for name, a in users.accounts.items()})
    store = open_store(settings, users)
    server = authorization_server(settings, users, store, token_minter(settings, store))
    session_secret = store.server_secret("session_secret", new_secret)
    app_routes = routes(server, settings, page_sessions(settings, session_secret))
    server.metadata = server_metadata(server, app_routes)
    return Starlette(
        routes=app_routes,
        # the body limit and headers for every answer; the busiest JSON endpoints past the router
        middleware=[Middleware(HardeningMiddleware), Middleware(JsonRoutes, routes=app_routes)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=background_tasks(settings, store),
    )


def page_sessions(settings: argparse.Namespace, session_secret: str) -> list[Middleware]:
    """The signed session cookie of the pages (pages.py): only the routes that read it pay
    for it; an API call never sets or clears it."""
    return [
        Middleware(
            SessionMiddleware,
            secret_key=session_secret,
            session_cookie="oauth_session",
            max_age=SESSION_LIFETIME,
            same_site="lax",
            https_only=settings.issuer.startswith("https://"),
        )
    ]


def background_tasks(settings: argparse.Namespace, store: Store):
    """While the app serves: the janitor, and the wake-ups of event polls across replicas."""
    retention = Retention(settings.retention_seconds, settings.unused_client_seconds)
    janitor = Janitor(store.db, retention, store.clients).running_every(
        settings.janitor_interval_seconds
    )
    wakeups = EventWakeups(settings.database_url, store.events.doorbell)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with janitor(app), wakeups.running(), store.db.async_reads():
            yield

    return lifespan


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hash-password"]:
        print_password_hash(parse_settings(argv[1:]).argon2)  # --argon2-… flags apply
        return
    settings = parse_settings(argv)
    prepare_process(settings)  # logging, and the argon2 parameters (passwords.py)
    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    try:
        app = build_app(settings)
    except UsersFileError as exc:
        sys.exit(f"error: {exc}")
    if settings.cimd_allow_loopback:
        log.warning("client metadata documents may live on loopback addresses: development only")
    log.info(
        "issuer %s, storage %s, access tokens %s, %d worker(s)",
        settings.issuer,
        settings.database_url.split("://")[0],
        settings.access_token_format,
        settings.workers,
    )
    serve(settings, app, "oauth_provider:build_app", argv)  # --workers: serving.py


if __name__ == "__main__":
    main()
