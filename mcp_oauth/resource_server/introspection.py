"""Bearer tokens checked by RFC 7662 introspection, behind a cache so the hot path stays local.

The rules, and why:
- The cache key is the SHA-256 of the token and the cached value holds no token, so neither a
  memory dump nor a debug print of the cache yields a usable credential.
- A positive answer is reused for min(configured TTL, time left until the token's `exp`): a
  revoked token keeps working at most one TTL, an expired one never.
- Refusals are cached briefly, with their reason, so a client retrying a dead token cannot
  hammer the provider and still learns why it was refused. They live in a cache of their own:
  a flood of junk tokens can only evict other refusals, never a user's accepted token.
- A provider that will not introspect one token (a 400 or 413 about that request) refuses
  that token; it is no outage, so it cannot pause checks of everyone else's tokens.
- Concurrent checks of one uncached token share a single introspection request.
- `aud` must name this resource (RFC 8707) and `iss` must be our provider: a token minted for
  another service, or by another issuer, is refused even though it is active. RFC 7662 §2.2
  requires only `active`: an answer without `iss`, from the provider's own endpoint to this
  server's authenticated call, speaks for that provider; a present `iss` must still match.
- Where the provider offers signed answers (RFC 9701), only those are taken, verified
  (signed_introspection.py).
- Provider trouble raises ProviderUnavailable (the caller answers 503), never a refusal (a 401
  would send clients into a login loop) and never an acceptance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from cachetools import TLRUCache
from fastmcp.server.auth import AccessToken

from mcp_oauth.resource_server.caches import hashed_key, lifetime_cache
from mcp_oauth.resource_server.provider_discovery import (
    IntrospectionRefused,
    Provider,
    ProviderUnavailable,
)
from mcp_oauth.resource_server.signed_introspection import SignedAnswers
from mcp_oauth.resource_server.verified_token import (
    CheckingVerifier,
    TokenRefused,
    VerifiedToken,
    claims_refusal,
)

log = logging.getLogger(__name__)


def attributed(answer: dict[str, Any], issuer: str) -> dict[str, Any]:
    """The answer with its issuer: RFC 7662 §2.2 requires only `active`, so an answer that
    names no `iss` speaks for the provider whose endpoint gave it to our authenticated call.
    A present `iss` is kept as it is, to be compared verbatim."""
    return answer if "iss" in answer else {**answer, "iss": issuer}


def refusal(answer: dict[str, Any], *, resource: str, issuer: str, now: float) -> str | None:
    """Why an introspection answer (RFC 7662 §2.2) from `issuer`'s own introspection endpoint,
    already attributed (attributed(): done once, where the answer arrives), does not admit a
    request to `resource`; None if it does: active, a bearer access token, ours (iss, aud) and
    not expired."""
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


class _Entry(NamedTuple):
    verified: VerifiedToken | None  # None: a cached refusal
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
        self._accepted: TLRUCache[bytes, _Entry] = lifetime_cache(cache_size, clock)
        self._refused: TLRUCache[bytes, _Entry] = lifetime_cache(cache_size, clock)
        self._inflight: dict[bytes, asyncio.Task[_Entry]] = {}
        self._signed: SignedAnswers | None = None
        self._signed_decided = False
        self.counters = {
            "cache_hits": 0,
            "cache_misses": 0,
            "introspections": 0,
            "shared_introspections": 0,
            "introspection_failures": 0,
            "signed_answers": 0,
        }

    async def check(self, token: str) -> AccessToken:
        """What the token grants; raises TokenRefused, or ProviderUnavailable on provider
        trouble. Concurrent first checks of one token share one introspection (single flight)."""
        key = hashed_key(token)
        entry = self._accepted.get(key) or self._refused.get(key)
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
        if entry.verified is None:
            raise TokenRefused(entry.refusal)
        return entry.verified.access_token(token)

    async def _introspect(self, token: str, key: bytes) -> _Entry:
        try:
            self.counters["introspections"] += 1
            answer, reason = await self._answer(token)
            if reason is None:
                lifetime = entry_lifetime(self.cache_ttl, answer.get("exp"), time.time())
                verified = VerifiedToken.from_introspection(answer, self.resource_url)
                entry = self._accepted[key] = _Entry(verified, "", lifetime)
            else:
                entry = self._refused[key] = _Entry(None, reason, self.refusal_ttl)
            if log.isEnabledFor(logging.DEBUG):  # not per miss at INFO: a line costs CPU
                outcome = "accepted" if reason is None else "refused"
                log.debug("Introspected a token: %s; counters %s", outcome, self.metrics())
            return entry
        finally:
            del self._inflight[key]

    async def _answer(self, token: str) -> tuple[dict[str, Any], str | None]:
        """The provider's answer about `token`, and why it does not admit it (None if it does)."""
        try:
            metadata = await self.provider.metadata()
            if not self._signed_decided:  # once: signed answers (RFC 9701) where offered
                self._signed = SignedAnswers.offered_by(self.provider, metadata, self.resource_url)
                self._signed_decided = True
            ask = self._signed.introspect if self._signed else self.provider.introspect
            answer = attributed(await ask(token), metadata.issuer)
            self.counters["signed_answers"] += self._signed is not None
        except ProviderUnavailable:
            self.counters["introspection_failures"] += 1
            raise
        except IntrospectionRefused as exc:
            return {}, str(exc)
        now = time.time()
        return answer, refusal(answer, resource=self.resource_url, issuer=metadata.issuer, now=now)

    def metrics(self) -> dict[str, int]:
        """Cache and introspection counters since start."""
        self._accepted.expire()
        self._refused.expire()
        return {
            **self.counters,
            "cache_entries": len(self._accepted),
            "refusal_entries": len(self._refused),
        }
