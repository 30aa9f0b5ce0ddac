"""Calling a downstream API as the signed-in user (On-Behalf-Of), never with the user's token.

The caller's token names this server as its audience, and the downstream API accepts only
tokens naming itself. So this server trades the caller's token at the authorization server
for one meant for the downstream API (the user stays the subject, this server becomes the
actor) and calls the API with that; the caller's own token goes to the provider only.

Two dialects of one idea:
- RFC 8693 token exchange (our provider, Keycloak, …): grant_type token-exchange with the
  caller's token as subject_token and the API as `resource` (an absolute URI) or `audience`
  (a logical name such as a Keycloak client id), this server authenticating with HTTP Basic.
- Entra ID's On-Behalf-Of grant: grant_type jwt-bearer with the caller's token as `assertion`,
  requested_token_use=on_behalf_of and scope `<API app ID URI>/.default`, client_id and
  client_secret in the body as Microsoft documents it.

Exchanged tokens are cached until shortly before they expire, keyed by a hash of the user,
their scopes and the audience (never by or with the caller's token), so a narrower grant never
reuses a token exchanged for a wider one. A cached token the API refuses (revoked meanwhile) is
dropped and exchanged once more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from cachetools import TLRUCache

from mcp_oauth.common.oauth_errors import refusal_reason
from mcp_oauth.resource_server.caches import hashed_key, lifetime_cache
from mcp_oauth.resource_server.caller import Caller
from mcp_oauth.resource_server.provider_discovery import Provider, ProviderError

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class DownstreamError(Exception):
    """The downstream call failed; the message says why, for the tool's caller."""


def token_exchange_form(subject_token: str, audience: str) -> dict[str, str]:
    """RFC 8693 §2.1: an absolute URI is a `resource`, anything else a logical `audience`."""
    target = "resource" if urlsplit(audience).scheme else "audience"
    return {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        target: audience,
    }


def entra_obo_form(assertion: str, audience: str) -> dict[str, str]:
    """Entra's OBO request for every permission the downstream API's app was consented."""
    return {
        "grant_type": JWT_BEARER,
        "assertion": assertion,
        "requested_token_use": "on_behalf_of",
        "scope": f"{audience.rstrip('/')}/.default",
    }


def exchange_key(subject: str, scopes: Collection[str], audience: str) -> bytes:
    """The cache's name for one user's exchanged token to one audience."""
    return hashed_key(subject, " ".join(sorted(scopes)), audience)


@dataclass(frozen=True, slots=True)
class _Exchanged:
    token: str
    lifetime: float


class OnBehalfOf:
    """Exchanges a caller's token for one to the downstream API, and calls the API with it."""

    def __init__(
        self,
        provider: Provider,
        *,
        url: str | None,
        audience: str | None,
        entra: bool,
        cache_size: int = 1000,
        margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.provider = provider
        self.url = url
        """The API to call; None: the provider's own <issuer>/api/profile."""
        self.audience = audience
        """What to exchange for; None: the API's URL."""
        self.entra = entra
        self.margin = margin
        self._cache: TLRUCache[bytes, _Exchanged] = lifetime_cache(cache_size, clock)
        self.counters = {"exchanges": 0, "cache_hits": 0, "downstream_calls": 0}

    async def call(self, caller: Caller) -> dict[str, Any]:
        """The downstream API's JSON answer for `caller`; raises DownstreamError."""
        url, audience = await self._target()
        key = exchange_key(caller.subject, caller.scopes, audience)
        cached = self._cache.get(key)
        if cached is not None:
            self.counters["cache_hits"] += 1
            response = await self._get(url, cached.token)
            if response.status_code != 401:
                return self._answer(url, response)
            self._cache.pop(key, None)  # revoked or expired early: exchange again
        exchanged = await self._exchange(key, caller.token, audience)
        return self._answer(url, await self._get(url, exchanged))

    async def _target(self) -> tuple[str, str]:
        url = self.url
        if url is None:
            if self.entra:
                raise DownstreamError(
                    "No downstream API is configured: set MCP_DOWNSTREAM_URL and "
                    "MCP_DOWNSTREAM_RESOURCE (the API's app ID URI) on this server."
                )
            try:
                issuer = (await self.provider.metadata()).issuer
            except ProviderError as exc:
                raise DownstreamError(
                    f"The authorization server cannot be reached: {exc}"
                ) from None
            url = f"{issuer.rstrip('/')}/api/profile"
        return url, self.audience or url

    async def _exchange(self, key: bytes, token: str, audience: str) -> str:
        if self.entra:
            form, in_body = entra_obo_form(token, audience), True
        else:
            form, in_body = token_exchange_form(token, audience), False
        self.counters["exchanges"] += 1
        try:
            answer = await self.provider.token(form, credentials_in_body=in_body)
        except ProviderError as exc:
            raise DownstreamError(f"Could not exchange your token for {audience}: {exc}") from None
        exchanged = answer.get("access_token")
        if not isinstance(exchanged, str) or not exchanged:
            raise DownstreamError(f"The token exchange for {audience} returned no access_token.")
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, int | float) and expires_in > self.margin:
            self._cache[key] = _Exchanged(exchanged, expires_in - self.margin)
        return exchanged

    async def _get(self, url: str, token: str) -> httpx.Response:
        self.counters["downstream_calls"] += 1
        try:
            return await self.provider.http.get(url, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise DownstreamError(f"The downstream API {url} cannot be reached: {exc!r}") from None

    @staticmethod
    def _answer(url: str, response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise DownstreamError(
                f"The downstream API {url} answered {response.status_code}: "
                f"{refusal_reason(response) or response.reason_phrase}"
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DownstreamError(f"The downstream API {url} did not answer a JSON object.")
        return body

    def metrics(self) -> dict[str, int]:
        """Exchange and cache counters since start."""
        self._cache.expire()
        return {**self.counters, "cache_entries": len(self._cache)}
