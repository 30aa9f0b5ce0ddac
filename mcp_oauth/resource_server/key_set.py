"""The provider's published key set (RFC 7517, at its `jwks_uri`), fetched and cached.

Keys are cached (1 h by default); a token naming an unknown `kid` refetches the set, at most
once per 30 s, so a key rotation is picked up at once but junk kids cannot hammer the provider.
A key set that cannot be fetched raises ProviderUnavailable (the caller answers 503), and
fetches back off like every other call to the provider.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import httpx
from cachetools import TTLCache
from joserfc import errors
from joserfc.jwk import KeySet

from mcp_oauth.resource_server.provider_discovery import Backoff, ProviderUnavailable

log = logging.getLogger(__name__)


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
