"""Bearer tokens checked locally as signed JWTs (RFC 9068), beside the introspection verifier.

Some providers cannot introspect their own access tokens (Entra ID has no introspection
endpoint; node oidc-provider cannot introspect its JWT access tokens), so the resource server
may instead check a JWT against the provider's published key set. `ChosenVerifier` picks the
mode: introspection when the provider advertises an introspection endpoint and this server has
client credentials for it, otherwise JWT when it advertises a `jwks_uri`.

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

Settings (environment; `ValidationSettings.from_env`):
  MCP_TOKEN_VALIDATION        auto (default) | introspection | jwt: how bearer tokens are checked
  MCP_JWKS_URL                key set URL, instead of the provider's advertised `jwks_uri`
                              (or Entra's public one); for a provider whose keys live elsewhere
  MCP_JWT_LEEWAY              seconds of clock skew allowed on exp/nbf/iat (default 60)
  MCP_JWKS_CACHE_TTL          seconds a fetched key set is reused (default 3600)
  MCP_JWKS_REFETCH_INTERVAL   least seconds between refetches caused by unknown kids (default 30)
  MCP_ENTRA_TENANT_ID         Entra tenant id: validate Entra v1/v2 tokens of this tenant
  MCP_ENTRA_CLIENT_ID         client id of the API's app registration (the v2 `aud`)
  MCP_ENTRA_APP_ID_URI        its application ID URI (the v1 `aud`; default api://<client id>)
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
from fastmcp.server.auth import AccessToken, TokenVerifier
from joserfc import errors, jws, jwt
from joserfc.jwk import KeySet

from mcp_oauth.provider_discovery import Backoff, ProviderUnavailable, metadata_urls
from mcp_oauth.token_verifier import Grant, audiences

log = logging.getLogger(__name__)

Mode = Literal["auto", "introspection", "jwt"]
ALGORITHMS = ("RS256", "ES256")


class TokenRefused(Exception):
    """A token this server does not accept; the message says why, for logs and error_description."""


class ConfigurationError(ValueError):
    """Settings or provider metadata that allow no way to check tokens; the message says the fix."""


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {env[name]!r}") from None


@dataclass(frozen=True)
class ValidationSettings:
    """How bearer tokens are checked (see the module docstring for each environment variable)."""

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
            issuers=(
                f"https://sts.windows.net/{tenant_id}/",
                f"https://login.microsoftonline.com/{tenant_id}/v2.0",
            ),
            audiences=(client_id, app_id_uri or f"api://{client_id}"),
            entra=True,
        )


def entra_jwks_url(tenant_id: str) -> str:
    """Entra's published key set for a tenant (the same keys sign v1 and v2 tokens)."""
    return f"https://login.microsoftonline.com/{tenant_id}/discovery/v2.0/keys"


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


def claims_refusal(claims: Mapping[str, Any], expect: Expectations) -> str | None:
    """Why the issuer or audience is not ours; None if both are."""
    if claims.get("iss") not in expect.issuers:
        return f"token issuer {claims.get('iss')!r} is not {' or '.join(expect.issuers)}"
    wanted = {aud.rstrip("/") for aud in expect.audiences}
    if not any(aud.rstrip("/") in wanted for aud in audiences(claims.get("aud"))):
        return (
            f"token audience {claims.get('aud')!r} is not this server "
            f"({' or '.join(expect.audiences)})"
        )
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


class JwtVerifier(TokenVerifier):
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
            claims, self.expect
        )
        if reason:
            raise TokenRefused(reason)
        grant = grant_of(claims, self.resource_url, entra=self.expect.entra)
        if self.expect.entra and not grant.scopes:
            # Entra ID tokens share typ, iss and (often) aud with access tokens, never scp/roles.
            raise TokenRefused("token has no scp or roles claim: not an Entra access token")
        return grant.access_token(token)

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's grant, or None if refused; raises ProviderUnavailable on key set trouble."""
        try:
            access = await self.check(token)
        except TokenRefused as refused:
            self.counters["refused"] += 1
            log.info("Refused a JWT access token: %s", refused)
            return None
        self.counters["accepted"] += 1
        return access

    def metrics(self) -> dict[str, int]:
        """Acceptance and key set counters since start."""
        return {**self.counters, **self.keys.counters}


# -- choosing the mode --------------------------------------------------------------------------


def choose_mode(
    settings: ValidationSettings,
    metadata: Mapping[str, Any] | None,
    *,
    provider_url: str,
    client_credentials: bool,
) -> Literal["introspection", "jwt"]:
    """Introspection when the provider offers it and we can authenticate to it; otherwise JWT
    when there are keys to check against. A forced mode or Entra needs no metadata."""
    if settings.mode != "auto":
        return settings.mode
    if settings.entra:
        return "jwt"
    metadata = metadata or {}
    if metadata.get("introspection_endpoint") and client_credentials:
        return "introspection"
    if metadata.get("jwks_uri") or settings.jwks_url:
        return "jwt"
    if metadata.get("introspection_endpoint"):
        raise ConfigurationError(
            f"provider {provider_url} offers introspection but no jwks_uri, and no client "
            "credentials are set: set MCP_RS_CLIENT_ID and MCP_RS_CLIENT_SECRET"
        )
    raise ConfigurationError(
        f"provider {provider_url} has no introspection endpoint and no jwks_uri; "
        "set MCP_JWKS_URL to its key set, or point OAUTH_PROVIDER_URL at another issuer"
    )


async def discover_metadata(
    http: httpx.AsyncClient, issuer: str, backoff: Backoff | None = None
) -> dict[str, Any]:
    """The provider's RFC 8414 (or OpenID) metadata document as is; ProviderUnavailable if none.

    Read raw because ProviderMetadata insists on an introspection endpoint, and `jwks_uri` is
    what matters here."""
    backoff = backoff or Backoff()
    if pause := backoff.remaining():
        raise ProviderUnavailable(f"{issuer} metadata recently failed", math.ceil(pause))
    problems = []
    for url in metadata_urls(issuer):
        try:
            response = await http.get(url)
            document = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            problems.append(f"{url}: {exc!r}")
            continue
        if not isinstance(document, dict):
            problems.append(f"{url} answered {response.status_code}")
        elif str(document.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
            problems.append(f"{url} names issuer {document.get('issuer')!r}, not {issuer!r}")
        else:
            backoff.succeeded()
            return document
    reason = "no usable metadata: " + "; ".join(problems)
    retry_after = backoff.failed()
    log.warning("Authorization server %s: %s; retrying in %d s", issuer, reason, retry_after)
    raise ProviderUnavailable(reason, retry_after)


class ChosenVerifier(TokenVerifier):
    """Picks introspection or JWT on first need (discovery may wait for the provider to come
    up), then hands every token to the chosen verifier."""

    def __init__(
        self,
        settings: ValidationSettings,
        *,
        provider_url: str,
        resource_url: str,
        http: httpx.AsyncClient,
        client_credentials: bool,
        introspection: Callable[[], TokenVerifier],
    ):
        super().__init__()
        self.settings = settings
        self.provider_url = provider_url
        self.resource_url = resource_url
        self.http = http
        self.client_credentials = client_credentials
        self._introspection = introspection
        self.chosen: TokenVerifier | None = None
        self.mode = "undecided"
        self._choosing = asyncio.Lock()
        self._backoff = Backoff()

    async def choose(self) -> TokenVerifier:
        """The verifier to use; ConfigurationError if none fits, ProviderUnavailable if the
        provider's metadata is needed and cannot be read now."""
        if self.chosen is None:
            async with self._choosing:
                if self.chosen is None:
                    self.chosen = await self._build()
                    self.mode = "jwt" if isinstance(self.chosen, JwtVerifier) else "introspection"
                    log.info("Checking bearer tokens by %s", self.mode)
        return self.chosen

    async def _build(self) -> TokenVerifier:
        s = self.settings
        if s.entra:
            assert s.entra_tenant_id and s.entra_client_id
            expect = Expectations.for_entra(
                s.entra_tenant_id, s.entra_client_id, s.entra_app_id_uri
            )
            return self._jwt(s.jwks_url or entra_jwks_url(s.entra_tenant_id), expect)
        metadata = None
        if s.mode != "introspection":
            metadata = await discover_metadata(self.http, self.provider_url, self._backoff)
        mode = choose_mode(
            s, metadata, provider_url=self.provider_url, client_credentials=self.client_credentials
        )
        if mode == "introspection":
            return self._introspection()
        assert metadata is not None
        jwks_uri = s.jwks_url or metadata.get("jwks_uri")
        if not jwks_uri:
            raise ConfigurationError(
                f"provider {self.provider_url} has no jwks_uri: set MCP_JWKS_URL to its key set"
            )
        return self._jwt(jwks_uri, Expectations.for_provider(metadata["issuer"], self.resource_url))

    def _jwt(self, jwks_uri: str, expect: Expectations) -> JwtVerifier:
        s = self.settings
        keys = KeySetCache(
            jwks_uri, self.http, ttl=s.jwks_cache_ttl, refetch_interval=s.jwks_refetch_interval
        )
        return JwtVerifier(keys, expect, self.resource_url, leeway=s.leeway)

    async def _chosen(self) -> TokenVerifier:
        """As choose(), but settings that allow no check at all are this server's fault, never
        the client's: logged and answered as unavailable (503), like bad RS credentials."""
        try:
            return await self.choose()
        except ConfigurationError as exc:
            log.error("Cannot check bearer tokens: %s", exc)
            raise ProviderUnavailable(str(exc), 30) from exc

    async def check(self, token: str) -> AccessToken:
        """As JwtVerifier.check, for whichever verifier was chosen."""
        chosen = await self._chosen()
        if isinstance(chosen, JwtVerifier):
            return await chosen.check(token)
        access = await chosen.verify_token(token)
        if access is None:
            raise TokenRefused("the authorization server reports the token inactive or not ours")
        return access

    async def verify_token(self, token: str) -> AccessToken | None:
        return await (await self._chosen()).verify_token(token)

    def metrics(self) -> dict[str, Any]:
        """The chosen verifier's counters, and which one it is."""
        metrics = cast(Callable[[], dict[str, Any]], getattr(self.chosen, "metrics", dict))
        return {"mode": self.mode, **metrics()}
