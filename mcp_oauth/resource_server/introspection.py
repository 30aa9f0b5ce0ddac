"""Bearer tokens checked by RFC 7662 introspection, behind a cache so the hot path stays local.

The rules, and why:
- The cache key is the SHA-256 of the token and the cached value holds no token, so neither a
  memory dump nor a debug print of the cache yields a usable credential.
- A positive answer is reused for min(configured TTL, time left until the token's `exp`): a
  revoked token keeps working at most one TTL, an expired one never.
- Refusals are cached briefly, with their reason, so a client retrying a dead token cannot
  hammer the provider and still learns why it was refused.
- Concurrent checks of one uncached token share a single introspection request.
- `aud` must name this resource (RFC 8707) and `iss` must be our provider: a token minted for
  another service, or by another issuer, is refused even though it is active.
- Provider trouble raises ProviderUnavailable (the caller answers 503), never a refusal (a 401
  would send clients into a login loop) and never an acceptance.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cachetools import TLRUCache
from fastmcp.exceptions import ToolError
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.dependencies import get_access_token

from mcp_oauth.resource_server.provider_discovery import Provider, ProviderUnavailable

log = logging.getLogger(__name__)


class TokenRefused(Exception):
    """A token this server does not accept; the message says why, for logs and error_description."""


class CheckingVerifier(TokenVerifier):
    """A FastMCP token verifier that can say why it refuses a token."""

    async def check(self, token: str) -> AccessToken:
        """The token's grant; raises TokenRefused (with why) or ProviderUnavailable."""
        raise NotImplementedError

    async def verify_token(self, token: str) -> AccessToken | None:
        """FastMCP's interface: the grant, or None when refused."""
        try:
            return await self.check(token)
        except TokenRefused:
            return None


def cache_key(token: str) -> bytes:
    """The cache's name for a token: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).digest()


def audiences(aud: object) -> list[str]:
    """`aud` as a list: RFC 7662 allows one string or an array of strings."""
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [item for item in aud if isinstance(item, str)]
    return []


def claims_refusal(
    claims: Mapping[str, Any], *, issuers: Collection[str], resources: Collection[str]
) -> str | None:
    """Why `iss` or `aud` is not ours; None if both are. The issuer is compared verbatim
    (RFC 8414), the audience ignoring a trailing slash (the same URL)."""
    if claims.get("iss") not in issuers:
        return f"token issuer {claims.get('iss')!r} is not {' or '.join(issuers)}"
    wanted = {resource.rstrip("/") for resource in resources}
    if not any(aud.rstrip("/") in wanted for aud in audiences(claims.get("aud"))):
        return f"token audience {claims.get('aud')!r} is not this server ({' or '.join(resources)})"
    return None


def refusal(answer: dict[str, Any], *, resource: str, issuer: str, now: float) -> str | None:
    """Why an introspection answer does not admit a request to `resource`; None if it does."""
    if answer.get("active") is not True:
        return f"{issuer} reports the token inactive (expired, revoked or unknown)"
    token_type = answer.get("token_type")
    if token_type is not None and str(token_type).lower() != "bearer":
        return f"token_type {token_type!r} is not a bearer access token"
    if reason := claims_refusal(answer, issuers=(issuer,), resources=(resource,)):
        return reason
    exp = answer.get("exp")
    if exp is not None and (not isinstance(exp, int | float) or exp <= now):
        return "token expired"
    return None


def entry_lifetime(ttl: float, exp: object, now: float) -> float:
    """Seconds a positive answer may be reused: the configured TTL, cut short by `exp`."""
    if isinstance(exp, int | float):
        return min(ttl, exp - now)
    return ttl


@dataclass(frozen=True, slots=True)
class Grant:
    """What an active token allows. Cached in place of the answer, and without the token."""

    client_id: str
    scopes: list[str]
    subject: str | None
    expires_at: int | None
    resource: str
    claims: dict[str, Any]

    @classmethod
    def from_answer(cls, answer: dict[str, Any], resource: str) -> Grant:
        exp, scope, sub = answer.get("exp"), answer.get("scope"), answer.get("sub")
        return cls(
            client_id=str(answer.get("client_id", "")),
            scopes=scope.split() if isinstance(scope, str) else [],
            subject=str(sub) if sub is not None else None,
            expires_at=int(exp) if exp is not None else None,
            resource=resource,
            claims=answer,
        )

    def access_token(self, token: str) -> AccessToken:
        """The FastMCP view of this grant for one request (fields known valid: no re-validation)."""
        return AccessToken.model_construct(
            token=token,
            client_id=self.client_id,
            scopes=self.scopes,
            expires_at=self.expires_at,
            resource=self.resource,
            subject=self.subject,
            claims=self.claims,
        )


class _Entry(NamedTuple):
    grant: Grant | None  # None: a cached refusal
    refusal: str  # why, for the 401 and the log
    lifetime: float


class IntrospectionVerifier(CheckingVerifier):
    """FastMCP token verifier that asks the provider's introspection endpoint, with a cache."""

    def __init__(
        self,
        provider: Provider,
        resource_url: str,
        *,
        cache_ttl: float = 60.0,
        refusal_ttl: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self.provider = provider
        self.resource_url = resource_url
        self.cache_ttl = cache_ttl
        self.refusal_ttl = refusal_ttl
        self._cache: TLRUCache[bytes, _Entry] = TLRUCache(
            cache_size, ttu=lambda _key, entry, now: now + entry.lifetime, timer=clock
        )
        self._inflight: dict[bytes, asyncio.Task[_Entry]] = {}
        self.counters = {
            "cache_hits": 0,
            "cache_misses": 0,
            "introspections": 0,
            "shared_introspections": 0,
            "introspection_failures": 0,
        }

    async def check(self, token: str) -> AccessToken:
        """The token's grant; raises TokenRefused, or ProviderUnavailable on provider trouble."""
        key = cache_key(token)
        entry = self._cache.get(key)
        if entry is not None:
            self.counters["cache_hits"] += 1
        else:
            self.counters["cache_misses"] += 1
            task = self._inflight.get(key)
            if task is None:
                task = self._inflight[key] = asyncio.ensure_future(self._introspect(token, key))
            else:
                self.counters["shared_introspections"] += 1
            # Shielded: a caller that goes away must not cancel the answer others wait for.
            entry = await asyncio.shield(task)
        if entry.grant is None:
            raise TokenRefused(entry.refusal)
        return entry.grant.access_token(token)

    async def _introspect(self, token: str, key: bytes) -> _Entry:
        try:
            self.counters["introspections"] += 1
            try:
                answer = await self.provider.introspect(token)
            except ProviderUnavailable:
                self.counters["introspection_failures"] += 1
                raise
            issuer = (await self.provider.metadata()).issuer
            now = time.time()
            reason = refusal(answer, resource=self.resource_url, issuer=issuer, now=now)
            if reason is None:
                entry = _Entry(
                    Grant.from_answer(answer, self.resource_url),
                    "",
                    entry_lifetime(self.cache_ttl, answer.get("exp"), now),
                )
            else:
                entry = _Entry(None, reason, self.refusal_ttl)
            self._cache[key] = entry
            log.info(
                "Introspected a token: %s; counters %s",
                "accepted" if reason is None else "refused",
                self.metrics(),
            )
            return entry
        finally:
            del self._inflight[key]

    def metrics(self) -> dict[str, int]:
        """Cache and introspection counters since start."""
        self._cache.expire()
        return {**self.counters, "cache_entries": len(self._cache)}


@dataclass(frozen=True)
class Caller:
    """The signed-in user a tool runs for, read from the verified token."""

    username: str
    subject: str
    client_id: str
    scopes: frozenset[str]
    expires_at: int | None
    token: str = field(repr=False)
    """The caller's own bearer token: only ever sent back to the provider (token exchange)."""

    @property
    def owner(self) -> str:
        """The key this user's stored data is filed under: the stable subject, not the name."""
        return self.subject


def current_caller() -> Caller:
    """The caller of the running tool; a ToolError if the request carried no valid token."""
    token = get_access_token()
    if token is None:
        raise ToolError("This tool needs a signed-in user: send a bearer token.")
    claims = token.claims or {}
    username = claims.get("username") or claims.get("preferred_username")
    subject = token.subject or username
    if not subject:
        if not token.client_id:
            raise ToolError("The token names neither a user nor a client (no sub or client_id).")
        # Client credentials: the client acts for itself, kept apart from any user's data.
        subject = f"client:{token.client_id}"
    return Caller(
        username=str(username or subject),
        subject=str(subject),
        client_id=token.client_id,
        scopes=frozenset(token.scopes),
        expires_at=token.expires_at,
        token=token.token,
    )
