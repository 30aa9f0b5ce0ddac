"""Bearer tokens checked locally as signed JWTs (RFC 9068), beside the introspection verifier.

Some providers cannot introspect their own access tokens (Entra ID has no introspection
endpoint; node oidc-provider cannot introspect its JWT access tokens), so the resource server
may instead check a JWT against the provider's published key set. `ChosenVerifier` picks the
mode from the provider's discovered metadata: introspection when it names an introspection
endpoint and this server has client credentials for it, otherwise JWT when it names a
`jwks_uri`; MCP_TOKEN_VALIDATION forces either.

What a JWT must show, and why:
- `alg` RS256 or ES256 only (never `none` or HS*: a public key must not become an HMAC secret);
  `typ` at+jwt (RFC 9068), or Entra's plain `JWT` in Entra mode, so an ID token cannot pass.
- A signature by a key in `jwks_uri`. Keys are cached (1 h); an unknown `kid` refetches the set,
  at most once per 30 s, so a rotation is picked up at once but junk kids cannot hammer it.
- `exp` in the future and `nbf`/`iat` not in the future, with a small leeway for clock skew.
- `iss` exactly the provider's issuer, and `aud` naming this server (RFC 8707); for Entra the
  v1 and v2 issuers of the tenant and the app's client id or app ID URI.
- Scopes from `scope` or `scp` (space separated) and `roles` (Entra app-only tokens).
A key set that cannot be fetched raises ProviderUnavailable (the caller answers 503), never an
acceptance. Each refusal carries a short reason naming what to fix; tokens are never logged.
The settings are read by `ValidationSettings.from_env` and described in SETTINGS_HELP.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

import httpx
from cachetools import TTLCache
from fastmcp.server.auth import AccessToken
from joserfc import errors, jws, jwt
from joserfc.jwk import KeySet

from mcp_oauth.resource_server.introspection import (
    CheckingVerifier,
    Grant,
    TokenRefused,
    claims_refusal,
)
from mcp_oauth.resource_server.provider_discovery import (
    Backoff,
    Provider,
    ProviderMetadata,
    ProviderUnavailable,
)

log = logging.getLogger(__name__)

Mode = Literal["auto", "introspection", "jwt"]
ALGORITHMS = ("RS256", "ES256")

SETTINGS_HELP = """\
  MCP_TOKEN_VALIDATION           auto (default) | introspection | jwt: how bearer tokens are
                                 checked; auto introspects when the provider offers it and
                                 MCP_RS_CLIENT_ID/SECRET are set, else validates JWTs locally
  MCP_JWKS_URL                   key set URL, instead of the provider's advertised jwks_uri
  MCP_JWT_LEEWAY                 seconds of clock skew allowed on exp/nbf/iat (default 60)
  MCP_JWKS_CACHE_TTL             seconds a fetched key set is reused (default 3600)
  MCP_JWKS_REFETCH_INTERVAL      least seconds between refetches caused by unknown kids
                                 (default 30)
  MCP_ENTRA_TENANT_ID            Entra tenant id: accept Entra v1/v2 tokens of this tenant
                                 (OAUTH_PROVIDER_URL then defaults to its v2.0 issuer)
  MCP_ENTRA_CLIENT_ID            client id of the MCP API's app registration (the v2 `aud`;
                                 also the default MCP_RS_CLIENT_ID)
  MCP_ENTRA_APP_ID_URI           its application ID URI (the v1 `aud`; default api://<client id>)
"""


class ConfigurationError(ValueError):
    """Settings or provider metadata that allow no way to check tokens; the message says the fix."""


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {env[name]!r}") from None


@dataclass(frozen=True)
class ValidationSettings:
    """How bearer tokens are checked (SETTINGS_HELP describes each environment variable)."""

    mode: Mode = "auto"
    jwks_url: str | None = None
    leeway: int = 60
    jwks_cache_ttl: float = 3600.0
    jwks_refetch_interval: float = 30.0
    entra_tenant_id: str | None = None
    entra_client_id: str | None = None
    entra_app_id_uri: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ValidationSettings:
        mode = env.get("MCP_TOKEN_VALIDATION", "auto").strip().lower()
        if mode not in get_args(Mode):
            raise ConfigurationError(
                f"MCP_TOKEN_VALIDATION must be auto, introspection or jwt, not {mode!r}"
            )
        tenant = env.get("MCP_ENTRA_TENANT_ID") or None
        client_id = env.get("MCP_ENTRA_CLIENT_ID") or None
        if tenant and not client_id:
            raise ConfigurationError(
                "MCP_ENTRA_TENANT_ID is set but MCP_ENTRA_CLIENT_ID is not: set it to the "
                "client id of the API's app registration"
            )
        if tenant and mode == "introspection":
            raise ConfigurationError(
                "Entra has no introspection endpoint: use MCP_TOKEN_VALIDATION=jwt or auto "
                "with MCP_ENTRA_TENANT_ID"
            )
        return cls(
            mode=cast(Mode, mode),
            jwks_url=env.get("MCP_JWKS_URL") or None,
            leeway=int(_number(env, "MCP_JWT_LEEWAY", 60)),
            jwks_cache_ttl=_number(env, "MCP_JWKS_CACHE_TTL", 3600),
            jwks_refetch_interval=_number(env, "MCP_JWKS_REFETCH_INTERVAL", 30),
            entra_tenant_id=tenant,
            entra_client_id=client_id,
            entra_app_id_uri=env.get("MCP_ENTRA_APP_ID_URI") or None,
        )

    @property
    def entra(self) -> bool:
        return self.entra_tenant_id is not None


@dataclass(frozen=True)
class Expectations:
    """What a token must say to be for this server: who may issue it and whom it must name."""

    issuers: tuple[str, ...]
    audiences: tuple[str, ...]
    entra: bool = False

    @classmethod
    def for_provider(cls, issuer: str, resource_url: str) -> Expectations:
        return cls(issuers=(issuer,), audiences=(resource_url,))

    @classmethod
    def for_entra(cls, tenant_id: str, client_id: str, app_id_uri: str | None) -> Expectations:
        """Entra v1 tokens: iss sts.windows.net, aud the app ID URI; v2 tokens: iss
        login.microsoftonline.com/…/v2.0, aud the client id. Either may carry either aud."""
        return cls(
            issuers=entra_issuers(tenant_id),
            audiences=(client_id, app_id_uri or f"api://{client_id}"),
            entra=True,
        )


def entra_issuers(tenant_id: str) -> tuple[str, str]:
    """A tenant's v1.0 and v2.0 token issuers; the v2.0 one is where its metadata lives."""
    return (
        f"https://sts.windows.net/{tenant_id}/",
        f"https://login.microsoftonline.com/{tenant_id}/v2.0",
    )


# -- the key set -------------------------------------------------------------------------------


class KeySetCache:
    """The provider's key set, fetched on first need, kept `ttl` seconds, and refetched early
    when a token names a kid it lacks, at most once per `refetch_interval`."""

    def __init__(
        self,
        jwks_uri: str,
        http: httpx.AsyncClient,
        *,
        ttl: float = 3600.0,
        refetch_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.jwks_uri = jwks_uri
        self.http = http
        self.refetch_interval = refetch_interval
        self.clock = clock
        self._cache: TTLCache[str, KeySet] = TTLCache(1, ttl, timer=clock)
        self._last_refetch = -math.inf
        self._fetching = asyncio.Lock()
        self._backoff = Backoff(clock=clock)
        self.counters = {"jwks_fetches": 0, "jwks_failures": 0, "jwks_refetches_refused": 0}

    def _cached(self, kid: str | None) -> tuple[KeySet | None, bool]:
        keys = self._cache.get(self.jwks_uri)
        known = keys is not None and (kid is None or any(k.kid == kid for k in keys))
        return keys, known

    async def keys_for(self, kid: str | None) -> KeySet:
        """The key set to check a token with `kid`; raises ProviderUnavailable if unobtainable."""
        keys, known = self._cached(kid)
        if known:
            assert keys is not None
            return keys
        async with self._fetching:  # concurrent misses share one fetch
            keys, known = self._cached(kid)
            if known:  # fetched meanwhile
                assert keys is not None
                return keys
            if keys is not None:  # cached, but without this kid: a key rotation, or junk
                if self.clock() - self._last_refetch < self.refetch_interval:
                    self.counters["jwks_refetches_refused"] += 1
                    return keys  # rate-limited: the token is refused for its unknown kid
                self._last_refetch = self.clock()
            keys = self._cache[self.jwks_uri] = await self._fetch()
            return keys

    async def _fetch(self) -> KeySet:
        if pause := self._backoff.remaining():
            raise ProviderUnavailable(f"{self.jwks_uri} recently failed", math.ceil(pause))
        self.counters["jwks_fetches"] += 1
        try:
            response = await self.http.get(self.jwks_uri)
            response.raise_for_status()
            keys = KeySet.import_key_set(response.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError, errors.JoseError) as exc:
            self.counters["jwks_failures"] += 1
            retry_after = self._backoff.failed()
            log.warning(
                "Key set %s unusable (%r); retrying in %d s", self.jwks_uri, exc, retry_after
            )
            reason = f"key set {self.jwks_uri} unusable: {exc!r}"
            raise ProviderUnavailable(reason, retry_after) from exc
        self._backoff.succeeded()
        log.info("Fetched key set %s: kids %s", self.jwks_uri, [k.kid for k in keys])
        return keys


# -- the rules, each a small pure check ---------------------------------------------------------


def _when(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):  # a date no calendar holds
        return str(timestamp)


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def header_refusal(header: Mapping[str, Any], *, entra: bool) -> str | None:
    """Why a JWS header is not that of an access token we accept; None if it is."""
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        return f"token algorithm {alg!r} is not allowed (only {', '.join(ALGORITHMS)})"
    typ = str(header.get("typ", "")).lower().removeprefix("application/")
    allowed = ("at+jwt", "jwt") if entra else ("at+jwt",)
    if typ not in allowed:
        return f"token typ {header.get('typ')!r} is not {' or '.join(allowed)} (RFC 9068)"
    return None


def time_refusal(claims: Mapping[str, Any], *, now: float, leeway: float) -> str | None:
    """Why the token is not valid at `now` (± leeway); None if it is. `exp` is required."""
    exp = claims.get("exp")
    if not _numeric(exp):
        return "token has no numeric exp claim"
    if exp <= now - leeway:
        return f"token expired at {_when(exp)}"
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not _numeric(value):
            return f"token {name} claim is not a number"
        if value > now + leeway:
            return f"token is not valid before {_when(value)} ({name})"
    return None


def _words(value: object) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def scopes_of(claims: Mapping[str, Any]) -> list[str]:
    """Granted scopes: `scope` or `scp` (a space-separated string, or a list) plus `roles`."""
    names = ("scope", "scp", "roles")
    return list(dict.fromkeys(word for name in names for word in _words(claims.get(name))))


def grant_of(claims: dict[str, Any], resource_url: str, *, entra: bool) -> Grant:
    """The FastMCP-facing grant. Entra: subject `oid@tid` (its `sub` is pairwise per client)
    and a `username` claim added from preferred_username, upn or unique_name."""
    exp = claims["exp"]
    if entra:
        oid, tid = claims.get("oid"), claims.get("tid")
        subject = f"{oid}@{tid}" if oid and tid else claims.get("sub")
        client_id = claims.get("azp") or claims.get("appid") or ""
        name = next(
            (claims[k] for k in ("preferred_username", "upn", "unique_name") if claims.get(k)),
            None,
        )
        claims = {**claims, "username": name} if name else claims
    else:
        subject = claims.get("sub")
        client_id = claims.get("client_id") or claims.get("azp") or ""
    return Grant(
        client_id=str(client_id),
        scopes=scopes_of(claims),
        subject=str(subject) if subject is not None else None,
        expires_at=int(exp),
        resource=resource_url,
        claims=claims,
    )


# -- the verifier -------------------------------------------------------------------------------


class JwtVerifier(CheckingVerifier):
    """FastMCP token verifier that checks JWT access tokens locally against the key set."""

    def __init__(
        self,
        keys: KeySetCache,
        expect: Expectations,
        resource_url: str,
        *,
        leeway: float = 60,
        now: Callable[[], float] = time.time,
    ):
        super().__init__()
        self.keys = keys
        self.expect = expect
        self.resource_url = resource_url
        self.leeway = leeway
        self.now = now
        self.counters = {"accepted": 0, "refused": 0}

    async def check(self, token: str) -> AccessToken:
        """The token's grant; raises TokenRefused (with why) or ProviderUnavailable."""
        try:
            access = await self._check(token)
        except TokenRefused:
            self.counters["refused"] += 1
            raise
        self.counters["accepted"] += 1
        return access

    async def _check(self, token: str) -> AccessToken:
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (errors.JoseError, ValueError, TypeError):
            raise TokenRefused(
                "token is not a signed JWT (an opaque token needs introspection)"
            ) from None
        if reason := header_refusal(header, entra=self.expect.entra):
            raise TokenRefused(reason)
        kid = header.get("kid")
        keys = await self.keys.keys_for(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(token, keys, algorithms=ALGORITHMS).claims
        except errors.InvalidKeyIdError:
            if kid is None:
                raise TokenRefused(
                    f"token has no kid and {self.keys.jwks_uri} has several keys"
                ) from None
            raise TokenRefused(f"token key id {kid!r} is not in {self.keys.jwks_uri}") from None
        except errors.BadSignatureError:
            raise TokenRefused(
                f"signature does not match any key in {self.keys.jwks_uri}"
            ) from None
        except (errors.JoseError, ValueError, TypeError) as exc:
            raise TokenRefused(f"token is not a valid JWT ({exc})") from None
        reason = time_refusal(claims, now=self.now(), leeway=self.leeway) or claims_refusal(
            claims, issuers=self.expect.issuers, resources=self.expect.audiences
        )
        if reason:
            raise TokenRefused(reason)
        grant = grant_of(claims, self.resource_url, entra=self.expect.entra)
        if self.expect.entra and not grant.scopes:
            # Entra ID tokens share typ, iss and (often) aud with access tokens, never scp/roles.
            raise TokenRefused("token has no scp or roles claim: not an Entra access token")
        return grant.access_token(token)

    def metrics(self) -> dict[str, int]:
        """Acceptance and key set counters since start."""
        return {**self.counters, **self.keys.counters}


# -- choosing the mode --------------------------------------------------------------------------


def choose_mode(
    settings: ValidationSettings, metadata: ProviderMetadata, *, client_credentials: bool
) -> Literal["introspection", "jwt"]:
    """Introspection when the provider offers it and we can authenticate to it; otherwise JWT
    when there are keys to check against. Entra offers no introspection."""
    offers_introspection = metadata.introspection_endpoint is not None and not settings.entra
    has_keys = bool(metadata.jwks_uri or settings.jwks_url)
    issuer = metadata.issuer
    if settings.mode == "introspection":
        if not offers_introspection:
            raise ConfigurationError(
                f"MCP_TOKEN_VALIDATION=introspection, but provider {issuer} has no "
                "introspection endpoint: use MCP_TOKEN_VALIDATION=jwt or auto"
            )
        if not client_credentials:
            raise ConfigurationError(
                "MCP_TOKEN_VALIDATION=introspection needs this server's client credentials: "
                "set MCP_RS_CLIENT_ID and MCP_RS_CLIENT_SECRET"
            )
        return "introspection"
    if settings.mode == "auto" and offers_introspection and client_credentials:
        return "introspection"
    if has_keys:
        return "jwt"
    if settings.mode == "jwt":
        raise ConfigurationError(
            f"MCP_TOKEN_VALIDATION=jwt, but provider {issuer} has no jwks_uri: "
            "set MCP_JWKS_URL to its key set"
        )
    if offers_introspection:
        raise ConfigurationError(
            f"provider {issuer} offers introspection but no jwks_uri, and no client "
            "credentials are set: set MCP_RS_CLIENT_ID and MCP_RS_CLIENT_SECRET"
        )
    raise ConfigurationError(
        f"provider {issuer} has no introspection endpoint and no jwks_uri; "
        "set MCP_JWKS_URL to its key set, or point OAUTH_PROVIDER_URL at another issuer"
    )


class ChosenVerifier(CheckingVerifier):
    """Picks introspection or JWT on first need (discovery may wait for the provider to come
    up), then hands every token to the chosen verifier."""

    def __init__(
        self,
        settings: ValidationSettings,
        *,
        provider: Provider,
        resource_url: str,
        client_credentials: bool,
        introspection: Callable[[], CheckingVerifier],
    ):
        super().__init__()
        self.settings = settings
        self.provider = provider
        self.resource_url = resource_url
        self.client_credentials = client_credentials
        self._introspection = introspection
        self.chosen: CheckingVerifier | None = None
        self.mode = "undecided"
        self._choosing = asyncio.Lock()

    async def choose(self) -> CheckingVerifier:
        """The verifier to use; ConfigurationError if none fits, ProviderUnavailable if the
        provider's metadata cannot be read now."""
        if self.chosen is None:
            async with self._choosing:
                if self.chosen is None:
                    self.chosen = await self._build()
                    if isinstance(self.chosen, JwtVerifier):
                        self.mode = "jwt"
                        log.info("Validating JWTs against %s", self.chosen.keys.jwks_uri)
                    else:
                        self.mode = "introspection"
                        log.info("Checking bearer tokens by introspection")
        return self.chosen

    async def _build(self) -> CheckingVerifier:
        s = self.settings
        metadata = await self.provider.metadata()
        mode = choose_mode(s, metadata, client_credentials=self.client_credentials)
        if mode == "introspection":
            return self._introspection()
        if s.entra:
            assert s.entra_tenant_id and s.entra_client_id  # from_env insists on both
            expect = Expectations.for_entra(
                s.entra_tenant_id, s.entra_client_id, s.entra_app_id_uri
            )
        else:
            expect = Expectations.for_provider(metadata.issuer, self.resource_url)
        jwks_uri = s.jwks_url or metadata.jwks_uri
        assert jwks_uri  # choose_mode picks jwt only with keys to check against
        keys = KeySetCache(
            jwks_uri,
            self.provider.http,
            ttl=s.jwks_cache_ttl,
            refetch_interval=s.jwks_refetch_interval,
        )
        return JwtVerifier(keys, expect, self.resource_url, leeway=s.leeway)

    async def check(self, token: str) -> AccessToken:
        """As the chosen verifier's check. Settings that allow no check at all are this
        server's fault, never the client's: logged and answered as unavailable (503)."""
        try:
            chosen = await self.choose()
        except ConfigurationError as exc:
            log.error("Cannot check bearer tokens: %s", exc)
            raise ProviderUnavailable(str(exc), 30) from exc
        return await chosen.check(token)

    def metrics(self) -> dict[str, Any]:
        """The chosen verifier's counters, and which one it is."""
        metrics = cast(Callable[[], dict[str, Any]], getattr(self.chosen, "metrics", dict))
        return {"mode": self.mode, **metrics()}
