"""Glewlwyd 2.7.5, Debian's OAuth 2.0 / OpenID Connect server, as a real peer for interop tests.

Everything is built in a temporary folder, as a new user of the package would: a SQLite
database from the schema the package ships, a configuration file, then users, scopes, clients
and OIDC plugins through Glewlwyd's admin REST API (as its default `admin`, whose password the
schema sets to `password`). It listens on a free loopback port until stopped.

What Glewlwyd wants, learnt from its source and docs (tests/test_interop_glewlwyd.py relies on
each): an OIDC plugin's issuer is `<external_url>/api/<plugin>` and only OpenID discovery is
served there; `external_url` has no trailing slash; access tokens name the RFC 8707 `resource`
in `aud` only where the plugin allows resources and lists them per scope (otherwise `aud` is
the scope list); a client may introspect or revoke other clients' tokens only when the plugin
has both `introspection-revocation-allow-target-client` and an
`introspection-revocation-auth-scope`; users grant scopes to a client, space separated, through
`PUT /api/auth/grant/<client>`; the authorization endpoint answers with a code (instead of its
login page) only for a signed-in session and with `g_continue` in the query. Without a TLS
certificate the configuration must not turn on `use_secure_connection`, nor secure cookies.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from joserfc.jwk import ECKey, KeySet, RSAKey

from tests.peers.process import start_peer, stop_peer
from tests.support import free_port

SCHEMAS = (
    Path("/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3"),
    Path("/usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz"),
)
"""Where the package ships its SQLite schema (the second may be stripped from slim images)."""
MODULES = Path("/usr/lib/glewlwyd")
ADMIN = {"username": "admin", "password": "password"}  # what the package's schema creates
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never visited: the code is read from Location
CONFIG = """\
port={port}
bind_address="127.0.0.1"
external_url="{url}"
login_url="login.html"
api_prefix="api"
log_mode="console"
log_level="INFO"
cookie_domain="127.0.0.1"
cookie_secure=0
session_expiration=3600
session_key="GLEWLWYD2_SESSION_ID"
admin_session_authentication="cookie"
profile_session_authentication="cookie"
allow_multiple_user_per_session=true
login_api_enabled=true
admin_scope="g_admin"
profile_scope="g_profile"
user_module_path="{modules}/user"
user_middleware_module_path="{modules}/user_middleware"
client_module_path="{modules}/client"
user_auth_scheme_module_path="{modules}/scheme"
plugin_module_path="{modules}/plugin"
hash_algorithm="SHA512"
database =
{{
  type = "sqlite3"
  path = "{database}"
}};
"""


def glewlwyd_binary() -> str | None:
    """The installed glewlwyd program (scripts/install.sh --test installs the package)."""
    return shutil.which("glewlwyd") or (
        "/usr/bin/glewlwyd" if Path("/usr/bin/glewlwyd").exists() else None
    )


def schema_sql() -> str:
    for path in SCHEMAS:
        if path.exists():
            data = path.read_bytes()
            return (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
    raise RuntimeError(f"the glewlwyd package's SQLite schema is missing (looked in {SCHEMAS})")


def signing_keys() -> dict[str, Any]:
    """A private JWKS for a plugin: RS384 (the default kid) and ES384 keys, each naming its
    algorithm, so tokens are signed with more than RS256 and the key set says with what."""
    rsa = RSAKey.generate_key(2048, {"kid": "rs384", "alg": "RS384", "use": "sig"}, private=True)
    ec = ECKey.generate_key("P-384", {"kid": "es384", "alg": "ES384", "use": "sig"}, private=True)
    return KeySet([rsa, ec]).as_dict(private=True)


def checked(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code != 200:
        raise RuntimeError(f"Glewlwyd refused to {what}: {response.status_code} {response.text}")
    return response


@dataclass
class GlewlwydPeer:
    """A running Glewlwyd and its admin API session."""

    url: str
    """external_url: no trailing slash."""
    process: Any
    log: Path
    admin: httpx.Client = field(repr=False)
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    def issuer(self, plugin: str) -> str:
        return f"{self.api}/{plugin}"

    def metadata(self, plugin: str) -> dict[str, Any]:
        discovery = f"{self.issuer(plugin)}/.well-known/openid-configuration"
        return checked(httpx.get(discovery, timeout=10), "serve discovery").json()

    # -- admin API ---------------------------------------------------------------------------------
    def add_scope(self, name: str) -> None:
        body = {"name": name, "display_name": name, "description": f"the {name} scope"}
        body |= {"password_required": False, "scheme": {}}
        checked(self.admin.post("/scope/", json=body), f"add scope {name}")

    def add_user(self, username: str, password: str, scopes: list[str]) -> None:
        body = {"username": username, "password": password, "name": username.title()}
        body |= {"email": f"{username}@example.org", "scope": scopes, "enabled": True}
        checked(self.admin.post("/user/", json=body), f"add user {username}")
        self.passwords[username] = password

    def add_client(
        self, client_id: str, secret: str, grants: list[str], scopes: list[str] | None = None
    ) -> None:
        body = {
            "client_id": client_id,
            "name": client_id,
            "confidential": True,
            "password": secret,
            "client_secret": secret,
            "enabled": True,
            "redirect_uri": [REDIRECT_URI],
            "authorization_type": grants,
            "token_endpoint_auth_method": ["client_secret_basic"],
            "scope": scopes or [],
        }
        checked(self.admin.post("/client/", json=body), f"add client {client_id}")

    def add_oidc_plugin(self, name: str, parameters: dict[str, Any]) -> None:
        body = {"module": "oidc", "name": name, "display_name": name}
        body["parameters"] = {"iss": self.issuer(name), **parameters}
        checked(self.admin.post("/mod/plugin/", json=body), f"add plugin {name}")

    # -- a user, through the API a browser would use -------------------------------------------
    @contextlib.contextmanager
    def session(self, username: str) -> Iterator[httpx.Client]:
        """A signed-in session of `username` (its cookie)."""
        with httpx.Client(base_url=self.api, timeout=10) as client:
            credentials = {"username": username, "password": self.passwords[username]}
            checked(client.post("/auth/", json=credentials), f"sign {username} in")
            yield client

    def grant(self, username: str, client_id: str, scope: str) -> None:
        """`username` allows `client_id` the space-separated `scope`."""
        with self.session(username) as user:
            checked(user.put(f"/auth/grant/{client_id}", json={"scope": scope}), "grant scopes")

    def authorization_code_token(
        self, plugin: str, username: str, client: tuple[str, str], scope: str, resource: str
    ) -> dict[str, Any]:
        """The token response of an authorization code flow (RFC 6749 §4.1) for `resource`
        (RFC 8707), driven over HTTP: the signed-in user's session asks for the code."""
        with self.session(username) as user:
            query = {
                "response_type": "code",
                "client_id": client[0],
                "redirect_uri": REDIRECT_URI,
                "scope": scope,
                "resource": resource,
                "state": "interop",
                "g_continue": "",
            }
            answer = user.get(f"/{plugin}/auth", params=query)
        location = answer.headers.get("location", "")
        code = parse_qs(urlsplit(location).query).get("code")
        if answer.status_code != 302 or not code:
            raise RuntimeError(f"no authorization code: {answer.status_code} {location}")
        form = {"grant_type": "authorization_code", "code": code[0]}
        form |= {"redirect_uri": REDIRECT_URI, "resource": resource}
        response = httpx.post(f"{self.issuer(plugin)}/token", data=form, auth=client, timeout=10)
        return checked(response, "exchange the code").json()

    def revoke(self, plugin: str, token: str, client: tuple[str, str]) -> None:
        """RFC 7009 revocation, by the client the token was issued to."""
        form = {"token": token, "token_type_hint": "access_token"}
        revoke = f"{self.issuer(plugin)}/revoke"
        checked(httpx.post(revoke, data=form, auth=client, timeout=10), "revoke")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.admin.close()
        stop_peer(self.process)


def start_glewlwyd(folder: Path, timeout: float = 30.0) -> GlewlwydPeer:
    """Glewlwyd on a free loopback port, with a database and configuration of its own in
    `folder`, signed in to its admin API; no users, clients or plugins yet."""
    binary = glewlwyd_binary()
    if binary is None:
        raise RuntimeError("glewlwyd is not installed: run scripts/install.sh --test")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database = folder / "glewlwyd.db"
    with sqlite3.connect(database) as db:
        db.executescript(schema_sql())
    config = folder / "glewlwyd.conf"
    config.write_text(CONFIG.format(port=port, url=url, modules=MODULES, database=database))
    process, _ = start_peer(
        [binary, f"--config-file={config}"],
        ready_url=f"{url}/config/",
        log=folder / "glewlwyd.log",
        timeout=timeout,
    )
    admin = httpx.Client(base_url=f"{url}/api", timeout=10)
    try:
        checked(admin.post("/auth/", json=ADMIN), "sign the admin in")
    except Exception:
        stop_peer(process)
        raise
    return GlewlwydPeer(url, process, folder / "glewlwyd.log", admin)


def plugin_parameters(
    *, resources: dict[str, list[str]], lifetime: int, introspection_scope: str
) -> dict[str, Any]:
    """An OIDC plugin that signs with signing_keys(), issues tokens by code flow for
    `resources` (scope -> resource URLs, RFC 8707) that live `lifetime` seconds, and lets any
    client introspect and revoke any client's tokens with its Basic credentials (Glewlwyd
    allows that only beside a bearer-token `introspection_scope`, unused here)."""
    return {
        "jwks-private": json.dumps(signing_keys()),
        "default-kid": "rs384",
        "jwks-show": True,
        "access-token-duration": lifetime,
        "refresh-token-duration": 3600,
        "code-duration": 600,
        "allow-non-oidc": True,
        "auth-type-code-enabled": True,
        "auth-type-client-enabled": True,
        "auth-type-refresh-enabled": True,
        "resource-allowed": True,
        "resource-scope": resources,
        "resource-scope-and-client-property": False,
        "introspection-revocation-allowed": True,
        "introspection-revocation-allow-target-client": True,
        "introspection-revocation-auth-scope": [introspection_scope],
        # The user's name in JWT access tokens, as OpenID Connect names it.
        "additional-parameters": [
            {"user-parameter": "username", "token-parameter": "preferred_username"}
        ],
    }
