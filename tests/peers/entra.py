"""A Microsoft Entra ID imitation: Entra's real token shapes, signed with a local key set.

Entra cannot run here, so this imitates what a resource server sees from it:

* access tokens in Entra's v1.0 and v2.0 shapes (claims as in Microsoft's "Access token claims
  reference"), RS256-signed by locally generated keys; header `typ: JWT` and `kid` (v1 also `x5t`);
* the tenant's OpenID discovery documents (v2 `/<tenant>/v2.0/.well-known/openid-configuration`,
  v1 `/<tenant>/.well-known/openid-configuration`) and key sets, served over real HTTP;
* the On-Behalf-Of grant at `/<tenant>/oauth2/v2.0/token`.

The real issuer hosts (login.microsoftonline.com, sts.windows.net) cannot be served locally: the
discovery documents keep Entra's real `issuer` values while `jwks_uri` and `token_endpoint` point
at the local server. A resource server therefore needs the metadata (or JWKS) URL and the expected
issuer as separate settings, and must not demand that the issuer equal the metadata URL's origin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from joserfc import errors, jwt
from joserfc.jwk import KeySet, RSAKey

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Entra backdates iat/nbf by five minutes; validators (and OBO here) allow the same skew.
CLOCK_SKEW = 300
OIDC_SCOPES = {"openid", "profile", "email", "offline_access"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _opaque() -> str:
    """Stand-in for Entra's internal claims (aio, rh, uti): random, not for consumption."""
    return _b64(secrets.token_bytes(18))


def new_signing_key() -> RSAKey:
    """An RSA key whose kid looks like Entra's: the base64url SHA-1 thumbprint (27 characters)."""
    key = RSAKey.generate_key(2048, private=True)
    kid = _b64(hashlib.sha1(key.as_der(private=False)).digest())  # noqa: S324 - shape, not security
    return RSAKey.import_key({**key.as_dict(private=True), "kid": kid, "use": "sig"})


@dataclass(frozen=True)
class EntraUser:
    """A work account of the imitated tenant."""

    oid: str = "6f0c1c3e-2b1d-4d7a-9a57-3f0e4b8c2d11"
    name: str = "Alice Example"
    given_name: str = "Alice"
    family_name: str = "Example"
    upn: str = "alice@contoso.onmicrosoft.com"


@dataclass
class EntraApp:
    """An app registration. `scopes` are the delegated scopes its API exposes; `token_version`
    is the access-token format Entra issues *for* it (manifest requestedAccessTokenVersion)."""

    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    scopes: tuple[str, ...] = ()
    token_version: str = "2.0"
    sp_oid: str = field(default_factory=lambda: str(uuid.uuid4()))  # its service principal

    @property
    def app_id_uri(self) -> str:
        return f"api://{self.client_id}"


class OboError(Exception):
    """An Entra token-endpoint error: OAuth `error` plus the AADSTS code Entra puts beside it."""

    def __init__(self, status: int, error: str, code: int, description: str):
        super().__init__(description)
        self.status, self.error, self.code, self.description = status, error, code, description

    def body(self) -> dict[str, Any]:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        return {
            "error": self.error,
            "error_description": f"AADSTS{self.code}: {self.description} Trace ID: {trace} "
            f"Correlation ID: {correlation} Timestamp: {now}",
            "error_codes": [self.code],
            "timestamp": now,
            "trace_id": trace,
            "correlation_id": correlation,
        }


class EntraTokenFactory:
    """One imitated tenant: its apps, its signing keys and the tokens it would issue.

    `api` is our MCP resource server's registration (scopes read/write/admin; the middle tier
    in OBO), `client` the public client app that calls it, `downstream` an API reached via OBO.
    """

    def __init__(self, tenant_id: str | None = None, user: EntraUser | None = None):
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.user = user or EntraUser()
        self.api = EntraApp(scopes=("read", "write", "admin"))
        self.client = EntraApp(client_secret="")
        self.downstream = EntraApp(scopes=("Files.Read", "Files.Write"))
        self.apps = {app.client_id: app for app in (self.api, self.client, self.downstream)}
        self.keys: list[RSAKey] = [new_signing_key()]

    # -- tenant facts ----------------------------------------------------------------------------
    @property
    def issuer_v1(self) -> str:
        return f"https://sts.windows.net/{self.tenant_id}/"

    @property
    def issuer_v2(self) -> str:
        return f"https://login.microsoftonline.com/{self.tenant_id}/v2.0"

    def issuer(self, version: str = "2.0") -> str:
        return self.issuer_v1 if version == "1.0" else self.issuer_v2

    def audience(self, version: str = "2.0", app: EntraApp | None = None) -> str:
        """v1 tokens carry the app ID URI as `aud`, v2 tokens the app's client id GUID."""
        app = app or self.api
        return app.app_id_uri if version == "1.0" else app.client_id

    def register_app(self, **kwargs: Any) -> EntraApp:
        app = EntraApp(**kwargs)
        self.apps[app.client_id] = app
        return app

    # -- keys ------------------------------------------------------------------------------------
    @property
    def signing_key(self) -> RSAKey:
        return self.keys[-1]

    def jwks(self, version: str = "2.0") -> dict[str, Any]:
        """Published keys as Entra shows them (x5t = kid; v2 key sets also name the issuer)."""
        extra = {"issuer": self.issuer_v2} if version == "2.0" else {}
        return {"keys": [{**k.as_dict(private=False), "x5t": k.kid, **extra} for k in self.keys]}

    def rotate_keys(self, retire_old: bool = False) -> str:
        """Publish a new key and sign with it from now on; returns its kid. Old keys stay
        published (as in an Entra rollover) unless `retire_old`."""
        key = new_signing_key()
        self.keys = [key] if retire_old else [*self.keys, key]
        return key.kid

    def sign(
        self,
        claims: dict[str, Any],
        version: str = "2.0",
        *,
        key: RSAKey | None = None,
        kid: str | None = None,
    ) -> str:
        key = key or self.signing_key
        kid = kid or key.kid
        header = {"typ": "JWT", "alg": "RS256", "kid": kid}
        if version == "1.0":
            header["x5t"] = kid  # legacy, only in v1 tokens
        return jwt.encode(header, claims, key)

    # -- good tokens -----------------------------------------------------------------------------
    def _times(self, lifetime: int, now: int | None) -> dict[str, int]:
        now = int(time.time()) if now is None else now
        return {"iat": now - CLOCK_SKEW, "nbf": now - CLOCK_SKEW, "exp": now + lifetime}

    def _sub(self, principal: str, client_id: str) -> str:
        """Entra's `sub` is pairwise: one value per principal and client app (use `oid` to key)."""
        return _b64(hashlib.sha256(f"{self.tenant_id}:{principal}:{client_id}".encode()).digest())

    def user_claims(
        self,
        version: str = "2.0",
        *,
        scp: str = "read write",
        user: EntraUser | None = None,
        audience: str | None = None,
        client_id: str | None = None,
        lifetime: int = 3600,
        now: int | None = None,
        confidential: bool = False,
    ) -> dict[str, Any]:
        """Claims of a delegated (user) access token, in Entra's v1.0 or v2.0 shape."""
        user = user or self.user
        client_id = client_id or self.client.client_id
        acr = "1" if confidential else "0"
        common = {
            "aud": audience or self.audience(version),
            "iss": self.issuer(version),
            **self._times(lifetime, now),
            "aio": _opaque(),
            "name": user.name,
            "oid": user.oid,
            "rh": _opaque(),
            "scp": scp,
            "sub": self._sub(user.oid, client_id),
            "tid": self.tenant_id,
            "uti": _opaque(),
            "ver": version,
        }
        if version == "1.0":
            return {
                **common,
                "acr": "1",
                "amr": ["pwd"],
                "appid": client_id,
                "appidacr": acr,
                "family_name": user.family_name,
                "given_name": user.given_name,
                "ipaddr": "127.0.0.1",
                "unique_name": user.upn,
                "upn": user.upn,
            }
        return {**common, "azp": client_id, "azpacr": acr, "preferred_username": user.upn}

    def access_token(self, version: str = "2.0", **kwargs: Any) -> str:
        """A valid delegated token for `api` (kwargs as for `user_claims`)."""
        return self.sign(self.user_claims(version, **kwargs), version)

    def app_token(
        self,
        version: str = "2.0",
        *,
        roles: tuple[str, ...] = ("read",),
        client: EntraApp | None = None,
        audience: str | None = None,
        lifetime: int = 3600,
    ) -> str:
        """An app-only (client credentials) token: `roles` instead of `scp`, no user claims."""
        client = client or self.downstream
        claims = {
            "aud": audience or self.audience(version),
            "iss": self.issuer(version),
            **self._times(lifetime, None),
            "aio": _opaque(),
            "idp": self.issuer(version) if version == "1.0" else self.issuer_v1,
            "idtyp": "app",
            "oid": client.sp_oid,
            "rh": _opaque(),
            "roles": list(roles),
            "sub": client.sp_oid,
            "tid": self.tenant_id,
            "uti": _opaque(),
            "ver": version,
        }
        if version == "1.0":
            claims |= {"appid": client.client_id, "appidacr": "1"}
        else:
            claims |= {"azp": client.client_id, "azpacr": "1"}
        return self.sign(claims, version)

    # -- deliberately bad tokens -----------------------------------------------------------------
    def wrong_issuer(self, version: str = "2.0") -> str:
        """Right shape, but issued by another tenant."""
        other = str(uuid.uuid4())
        claims = self.user_claims(version) | {"tid": other}
        claims["iss"] = self.issuer(version).replace(self.tenant_id, other)
        return self.sign(claims, version)

    def wrong_audience(self, version: str = "2.0") -> str:
        """A valid token meant for another API (the downstream one)."""
        aud = self.audience(version, self.downstream)
        return self.sign(self.user_claims(version, audience=aud), version)

    def foreign_key(self, version: str = "2.0") -> str:
        """Signed by a key that is not published, under the kid of a published one."""
        return self.sign(
            self.user_claims(version), version, key=new_signing_key(), kid=self.signing_key.kid
        )

    def unknown_kid(self, version: str = "2.0") -> str:
        """Signed by an unpublished key with its own kid (absent from the JWKS)."""
        return self.sign(self.user_claims(version), version, key=new_signing_key())

    def expired(self, version: str = "2.0") -> str:
        """Expired ten minutes ago: beyond any five-minute leeway."""
        return self.access_token(version, now=int(time.time()) - 3600 - 600)

    def not_yet_valid(self, version: str = "2.0") -> str:
        """`nbf` ten minutes in the future: beyond any five-minute leeway."""
        return self.access_token(version, now=int(time.time()) + 600 + CLOCK_SKEW)

    # -- validation and On-Behalf-Of -------------------------------------------------------------
    def verify(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """Validate as a careful resource server would; raises OboError with Entra's codes."""
        try:
            claims = jwt.decode(token, KeySet(self.keys), algorithms=["RS256"]).claims
        except (errors.InvalidKeyIdError, errors.BadSignatureError, errors.DecodeError) as exc:
            raise _grant_error(50013, "Assertion failed signature validation.") from exc
        except (errors.JoseError, ValueError) as exc:
            raise _grant_error(50027, "JWT token is invalid or malformed.") from exc
        if claims.get("iss") not in (self.issuer_v1, self.issuer_v2):
            raise _grant_error(50013, "Assertion issuer is not valid.")
        try:
            jwt.JWTClaimsRegistry(leeway=CLOCK_SKEW, exp={"essential": True}).validate(claims)
        except errors.JoseError as exc:
            raise _grant_error(500133, "Assertion is not within its valid time range.") from exc
        if claims.get("aud") not in audiences:
            raise _grant_error(500131, "Assertion audience does not match the Client app.")
        return claims

    def _authenticate(self, form: dict[str, str], basic: tuple[str, str] | None) -> EntraApp:
        client_id, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        app = self.apps.get(client_id)
        if app is None:
            raise OboError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found.",
            )
        if not app.client_secret or not secrets.compare_digest(app.client_secret, secret):
            raise OboError(401, "invalid_client", 7000215, "Invalid client secret provided.")
        return app

    def _target(self, scope: str) -> tuple[EntraApp, str, tuple[str, ...]]:
        """Resolve `api://<id>/.default` (or named scopes of one API) to the app and scp."""
        wanted = [s for s in scope.split() if s not in OIDC_SCOPES]
        resources = {s.rpartition("/")[0] for s in wanted}
        if len(resources) != 1 or "" in resources:
            raise OboError(
                400,
                "invalid_scope",
                70011,
                "The provided value for the input parameter 'scope' is not valid.",
            )
        resource = resources.pop()
        app = next((a for a in self.apps.values() if resource in (a.app_id_uri, a.client_id)), None)
        if app is None:
            raise OboError(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant.",
            )
        names = [s.rpartition("/")[2] for s in wanted]
        granted = app.scopes if ".default" in names else tuple(names)
        if not granted or not set(granted) <= set(app.scopes):
            raise _grant_error(65001, "The user or administrator has not consented.")
        return app, resource, granted

    def on_behalf_of(
        self, form: dict[str, str], basic: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """Entra's OBO: verify the user's token (its aud must be the calling app) and mint a token
        for the downstream API with the same user (oid, tid, name); `sub` is pairwise per client."""
        if form.get("grant_type") != JWT_BEARER:
            raise OboError(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        for name in ("assertion", "scope", "requested_token_use"):
            if not form.get(name):
                raise OboError(
                    400,
                    "invalid_request",
                    900144,
                    f"The request body must contain the parameter '{name}'.",
                )
        if form["requested_token_use"] != "on_behalf_of":
            raise OboError(400, "invalid_request", 90019, "requested_token_use is not valid.")
        caller = self._authenticate(form, basic)
        claims = self.verify(form["assertion"], [caller.client_id, caller.app_id_uri])
        if "scp" not in claims:
            raise _grant_error(50034, "App-only tokens cannot be used for on-behalf-of.")
        target, resource, granted = self._target(form["scope"])
        user = EntraUser(
            oid=claims["oid"],
            name=claims.get("name", ""),
            given_name=claims.get("given_name", ""),
            family_name=claims.get("family_name", ""),
            upn=claims.get("preferred_username") or claims.get("upn", ""),
        )
        version = target.token_version
        token = self.sign(
            self.user_claims(
                version,
                scp=" ".join(granted),
                user=user,
                audience=self.audience(version, target),
                client_id=caller.client_id,
                confidential=True,
            ),
            version,
        )
        return {
            "token_type": "Bearer",
            "scope": " ".join(f"{resource}/{name}" for name in granted),
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        }


def _grant_error(code: int, description: str) -> OboError:
    return OboError(400, "invalid_grant", code, description)


class EntraServer:
    """Serves one factory's discovery documents, key sets and token endpoint on 127.0.0.1.

    `hits` counts requests per path so tests can check that a resource server caches its JWKS.
    """

    def __init__(self, factory: EntraTokenFactory, port: int = 0):
        self.factory = factory
        self.hits: Counter[str] = Counter()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> EntraServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> EntraServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- URLs ------------------------------------------------------------------------------------
    def _tenant(self) -> str:
        return f"{self.base_url}/{self.factory.tenant_id}"

    def discovery_url(self, version: str = "2.0") -> str:
        if version == "1.0":
            return f"{self._tenant()}/.well-known/openid-configuration"
        return f"{self._tenant()}/v2.0/.well-known/openid-configuration"

    def jwks_uri(self, version: str = "2.0") -> str:
        if version == "1.0":
            return f"{self.base_url}/common/discovery/keys"
        return f"{self._tenant()}/discovery/v2.0/keys"

    @property
    def token_endpoint(self) -> str:
        return f"{self._tenant()}/oauth2/v2.0/token"

    def metadata(self, version: str = "2.0") -> dict[str, Any]:
        """The tenant's OpenID discovery document, shaped like Entra's, endpoints made local."""
        t = self._tenant()
        shared = {
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": self.jwks_uri(version),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "issuer": self.factory.issuer(version),
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "kerberos_endpoint": f"{t}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        claims = [  # the claims both versions list first, in Entra's order
            "sub",
            "iss",
            "cloud_instance_name",
            "cloud_instance_host_name",
            "cloud_graph_host_name",
            "msgraph_host",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "acr",
        ]
        if version == "1.0":
            return {
                "token_endpoint": f"{t}/oauth2/token",
                **shared,
                "response_types_supported": [
                    "code",
                    "id_token",
                    "code id_token",
                    "token id_token",
                    "token",
                ],
                "scopes_supported": ["openid"],
                "microsoft_multi_refresh_token": True,
                "authorization_endpoint": f"{t}/oauth2/authorize",
                "device_authorization_endpoint": f"{t}/oauth2/devicecode",
                "end_session_endpoint": f"{t}/oauth2/logout",
                "check_session_iframe": f"{t}/oauth2/checksession",
                "userinfo_endpoint": f"{t}/openid/userinfo",
                "claims_supported": [
                    *claims,
                    "amr",
                    "nonce",
                    "email",
                    "given_name",
                    "family_name",
                    "nickname",
                ],
            }
        return {
            "token_endpoint": self.token_endpoint,
            **shared,
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{t}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{t}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{t}/oauth2/v2.0/logout",
            "claims_supported": [
                *claims,
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
        }

    def route(self, method: str, path: str) -> tuple[str, str] | None:
        """(what, version) for a request, or None: kept apart from HTTP so it reads as a table."""
        tid = self.factory.tenant_id
        table = {
            ("GET", f"/{tid}/v2.0/.well-known/openid-configuration"): ("metadata", "2.0"),
            ("GET", f"/{tid}/.well-known/openid-configuration"): ("metadata", "1.0"),
            ("GET", f"/{tid}/discovery/v2.0/keys"): ("jwks", "2.0"),
            ("GET", "/common/discovery/v2.0/keys"): ("jwks", "2.0"),
            ("GET", f"/{tid}/discovery/keys"): ("jwks", "1.0"),
            ("GET", "/common/discovery/keys"): ("jwks", "1.0"),
            ("POST", f"/{tid}/oauth2/v2.0/token"): ("token", "2.0"),
        }
        return table.get((method, path))


def _handler(server: EntraServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store" if status != 200 else "max-age=86400")
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            server.hits[path] += 1
            found = server.route(method, path)
            if found is None:
                self._send(404, {"error": "not_found", "path": path})
            elif found[0] == "metadata":
                self._send(200, server.metadata(found[1]))
            elif found[0] == "jwks":
                self._send(200, server.factory.jwks(found[1]))
            else:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                try:
                    self._send(200, server.factory.on_behalf_of(form, _basic(self.headers)))
                except OboError as exc:
                    self._send(exc.status, exc.body())

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    return Handler


def _basic(headers: Any) -> tuple[str, str] | None:
    """client_secret_basic credentials (RFC 6749 2.3.1: form-urlencoded, then base64)."""
    value = headers.get("Authorization", "")
    if not value.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(value[6:], validate=True).decode().partition(":")
    except ValueError:
        return ("", "")
    return unquote_plus(user), unquote_plus(password)
