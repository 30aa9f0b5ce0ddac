"""The authorization server as the resource server sees it: found by discovery, called with
the resource server's own client credentials, and given room to recover when it is down.

The provider is configured by its issuer URL alone. Every endpoint comes from its RFC 8414
metadata (OpenID discovery as a fallback), so a provider that keeps introspection elsewhere,
such as Keycloak's /realms/<name>/protocol/openid-connect/token/introspect, works unchanged.
Discovery is lazy: the resource server starts while the provider is down and looks again on
first need. After a failure, calls fail fast for a growing pause (1 s, 2 s, 4 s … 30 s), so an
outage costs callers nothing but a 503 with Retry-After instead of a pile of timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

log = logging.getLogger(__name__)


class ProviderError(Exception):
    """The authorization server refused a request; the message says why."""


class ProviderUnavailable(ProviderError):
    """The authorization server cannot answer now; the caller should retry after a pause."""

    def __init__(self, reason: str, retry_after: int):
        super().__init__(reason)
        self.retry_after = retry_after


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer publishes its metadata, in the order to try.

    RFC 8414 §3.1 inserts the well-known segment between host and issuer path
    (https://host/.well-known/oauth-authorization-server/realms/x); OpenID Connect
    Discovery appends it to the issuer (https://host/realms/x/.well-known/openid-configuration).
    """
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    return [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}{path}/.well-known/openid-configuration",
    ]


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of the provider's metadata this resource server uses."""

    issuer: str
    """Exactly as the provider states it (RFC 8414 §3.3): advertised and compared verbatim."""
    introspection_endpoint: str
    admin_grants_endpoint: str
    admin_revoke_user_endpoint: str

    @classmethod
    def from_document(cls, document: Any, expected_issuer: str) -> ProviderMetadata:
        if not isinstance(document, dict):
            raise ValueError("metadata is not a JSON object")
        issuer = document.get("issuer")
        if not isinstance(issuer, str) or issuer.rstrip("/") != expected_issuer.rstrip("/"):
            raise ValueError(f"metadata names issuer {issuer!r}, expected {expected_issuer!r}")
        introspection = document.get("introspection_endpoint")
        if not isinstance(introspection, str):
            raise ValueError("metadata has no introspection_endpoint")
        # The admin API is this project's extension: advertised when the provider says so,
        # otherwise at its documented place under the issuer.
        base = issuer.rstrip("/")
        return cls(
            issuer=issuer,
            introspection_endpoint=introspection,
            admin_grants_endpoint=document.get("admin_grants_endpoint", f"{base}/admin/grants"),
            admin_revoke_user_endpoint=document.get(
                "admin_revoke_user_endpoint", f"{base}/admin/revoke-user"
            ),
        )


class Backoff:
    """Fail fast while the provider is known to be down, for a pause that doubles per failure."""

    def __init__(
        self, first: float = 1.0, cap: float = 30.0, clock: Callable[[], float] = time.monotonic
    ):
        self.first = first
        self.cap = cap
        self.clock = clock
        self.delay = 0.0
        self.until = 0.0

    def remaining(self) -> float:
        """Seconds left in the current pause (0 when calls may go out)."""
        return max(0.0, self.until - self.clock())

    def failed(self) -> int:
        """Start the next, longer pause; returns it in whole seconds for Retry-After."""
        self.delay = min(self.cap, self.delay * 2 if self.delay else self.first)
        self.until = self.clock() + self.delay
        return math.ceil(self.delay)

    def succeeded(self) -> None:
        self.delay = 0.0
        self.until = 0.0


class Provider:
    """Metadata discovery, token introspection and the admin API of one authorization server.

    Every call authenticates as the resource server (client_secret_basic); a user's token is
    only ever sent to the introspection endpoint, as the thing being asked about.
    """

    def __init__(
        self,
        issuer_url: str,
        client_id: str,
        client_secret: str,
        http: httpx.AsyncClient,
        backoff: Backoff | None = None,
    ):
        self.issuer_url = issuer_url
        self.http = http
        # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
        self._auth = httpx.BasicAuth(quote(client_id, safe=""), quote(client_secret, safe=""))
        self._backoff = backoff or Backoff()
        self._metadata: ProviderMetadata | None = None
        self._discovering = asyncio.Lock()

    async def metadata(self) -> ProviderMetadata:
        """The provider's metadata, discovered on first need and kept once found."""
        if self._metadata is None:
            async with self._discovering:  # concurrent first needs share one discovery
                if self._metadata is None:
                    self._metadata = await self._discover()
                    log.info(
                        "Discovered authorization server %s (introspection at %s)",
                        self._metadata.issuer,
                        self._metadata.introspection_endpoint,
                    )
        return self._metadata

    async def _discover(self) -> ProviderMetadata:
        problems = []
        for url in metadata_urls(self.issuer_url):
            response = await self._send("GET", url, auth=False)
            if response.status_code != 200:
                problems.append(f"{url} answered {response.status_code}")
                continue
            try:
                return ProviderMetadata.from_document(response.json(), self.issuer_url)
            except ValueError as exc:  # also a body that is not JSON
                problems.append(f"{url}: {exc}")
        raise self._unavailable("no usable metadata: " + "; ".join(problems))

    async def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 answer for `token`; raises ProviderUnavailable rather than guess."""
        endpoint = (await self.metadata()).introspection_endpoint
        data = {"token": token, "token_type_hint": "access_token"}
        response = await self._send("POST", endpoint, data=data)
        if response.status_code != 200:
            # Our own credentials were refused: a configuration problem, never the user's,
            # so it is reported as an outage and no client is sent to log in again.
            raise self._unavailable(
                f"introspection answered {response.status_code}; "
                "check MCP_RS_CLIENT_ID and MCP_RS_CLIENT_SECRET"
            )
        return self._json_object(response)

    async def active_grants(self) -> dict[str, Any]:
        """The admin API's list of active grants."""
        endpoint = (await self.metadata()).admin_grants_endpoint
        return self._admin_answer(await self._send("GET", endpoint))

    async def revoke_user(self, username: str) -> dict[str, Any]:
        """Revoke every token of `username` through the admin API."""
        endpoint = (await self.metadata()).admin_revoke_user_endpoint
        return self._admin_answer(await self._send("POST", endpoint, data={"username": username}))

    def _admin_answer(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code == 200:
            return self._json_object(response)
        try:
            body = response.json()
            reason = body.get("error_description") or body.get("error")
        except (ValueError, AttributeError):
            reason = None
        raise ProviderError(f"the authorization server refused: {reason or response.status_code}")

    def _json_object(self, response: httpx.Response) -> dict[str, Any]:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise self._unavailable(f"{response.request.url} did not answer a JSON object")
        return answer

    async def _send(
        self, method: str, url: str, *, auth: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One request to the provider, refused at once while a failure pause lasts."""
        if pause := self._backoff.remaining():
            raise ProviderUnavailable("authorization server recently failed", math.ceil(pause))
        try:
            response = await self.http.request(
                method, url, auth=self._auth if auth else None, **kwargs
            )
        except httpx.HTTPError as exc:
            raise self._unavailable(f"{method} {url} failed: {exc!r}") from exc
        if response.status_code >= 500:
            raise self._unavailable(f"{method} {url} answered {response.status_code}")
        self._backoff.succeeded()
        return response

    def _unavailable(self, reason: str) -> ProviderUnavailable:
        retry_after = self._backoff.failed()
        log.warning("Authorization server unavailable (%s); retrying in %d s", reason, retry_after)
        return ProviderUnavailable(reason, retry_after)
