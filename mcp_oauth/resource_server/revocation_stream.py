"""This server as a Shared Signals receiver: revocations from the provider within a second.

A background task (started with the server) finds the provider's transmitter metadata
(`/.well-known/ssf-configuration`, SSF 1.0 §7.2), creates a stream of its own (each server
process is its own receiver), and keeps one RFC 8936 long poll open. Each Security Event Token
is verified (security_event_checks.py: signature by the provider's key set, `typ`, `iss`,
`aud` = our client id) and applied to the deny-lists (revocations.py); what was applied or
refused is acknowledged on the next poll, refusals with their RFC 8935 error code.

Health decides the cache: the verifier keeps accepted answers for the longer TTL only while
the stream is healthy (`healthy`). When the stream fails, or may have missed events (the
provider lost the stream or pruned what it had not acknowledged), `fall_back` runs at once:
the answers kept beyond the ordinary TTL are dropped, and only the introspection cache's own
TTL applies until a new stream answers its first poll. A new stream starts at the
first event whose tokens may still be live, so a reconnected (or restarted) server learns the
revocations it missed. A provider without the metadata (Keycloak, Entra, …) leaves this
server exactly as it was without a stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from mcp_oauth.common.security_events import POLL_DELIVERY, SSF_CONFIGURATION_PATH
from mcp_oauth.resource_server.key_set import KeySetCache
from mcp_oauth.resource_server.provider_discovery import (
    Provider,
    ProviderError,
    basic_authorization,
)
from mcp_oauth.resource_server.revocations import Revocations, Revoked
from mcp_oauth.resource_server.security_event_checks import (
    SetRefused,
    check_set_audience,
    check_set_issuer,
    check_set_type,
    set_events,
    set_key_id,
    verified_set,
)

log = logging.getLogger(__name__)

POLL_TIMEOUT = httpx.Timeout(5.0, read=30.0)  # the provider holds a poll up to 15 s
MAX_PAUSE = 30.0


class StreamLost(Exception):
    """The provider no longer has our stream, or pruned events it had not delivered to it."""


def ssf_configuration_url(issuer: str) -> str:
    """SSF 1.0 §7.2: the well-known path goes between the issuer's host and its path."""
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}{SSF_CONFIGURATION_PATH}{parts.path.rstrip('/')}"


class RevocationStream:
    """The receiver task (see the module docstring); `metrics` for /metrics."""

    def __init__(
        self,
        provider: Provider,
        client_id: str,
        client_secret: str,
        revocations: Revocations,
        *,
        fall_back: Callable[[], None],
        healthy: Callable[[], None],
        evict: Callable[[Revoked], None],
    ):
        self.provider = provider
        self.http = provider.http
        self.client_id = client_id
        self._authorization = {"Authorization": basic_authorization(client_id, client_secret)}
        self.revocations = revocations
        self._fall_back = fall_back
        self._healthy = healthy
        self._evict = evict
        self.state = "starting"
        self.counters = {"events_applied": 0, "sets_refused": 0, "streams_created": 0, "gaps": 0}
        self.last_event_lag: float | None = None
        self.last_answer_at: float | None = None

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Receive until cancelled; gives up only on a provider that has no stream to offer."""
        pause = 1.0
        while True:
            try:
                issuer = (await self.provider.metadata()).issuer
                configuration = await self._configuration(issuer)
                if configuration is None:
                    self.state = "not offered by the provider"
                    log.info("The provider offers no event stream: cache TTL rules only")
                    return
                await self._receive(issuer, configuration)
            except StreamLost as exc:
                self._gap(f"events may have been missed ({exc})")
                pause = 1.0
                continue
            except (httpx.HTTPError, ProviderError, ValueError, KeyError, TypeError) as exc:
                self._gap(f"event stream unavailable ({exc!r})")
            except Exception as exc:  # never a dead task that still looks healthy
                log.exception("Revocation events: unexpected failure")
                self._gap(f"unexpected failure ({exc!r})")
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)

    def _gap(self, why: str) -> None:
        if self.state == "healthy":
            self.counters["gaps"] += 1
            self._fall_back()
            log.warning("Revocation events: %s; cached answers dropped, TTL rules apply", why)
        else:
            log.info("Revocation events: %s", why)
        self.state = "unavailable"

    async def _configuration(self, issuer: str) -> dict[str, Any] | None:
        """The transmitter metadata (SSF 1.0 §7.1); None when the provider publishes none or
        one for another issuer, or cannot poll-deliver."""
        response = await self.http.get(ssf_configuration_url(issuer))
        if 400 <= response.status_code < 500 and response.status_code != 429:
            return None  # not published (or not to us): exactly as without a stream
        response.raise_for_status()
        configuration = response.json()
        if not isinstance(configuration, dict) or configuration.get("issuer") != issuer:
            log.warning("The provider's ssf-configuration names another issuer: ignored")
            return None
        if POLL_DELIVERY not in configuration.get("delivery_methods_supported", []):
            return None
        return configuration

    async def _receive(self, issuer: str, configuration: dict[str, Any]) -> None:
        keys = KeySetCache(configuration["jwks_uri"], self.http)
        self.state = "connecting"
        created = await self.http.post(
            configuration["configuration_endpoint"],
            json={"delivery": {"method": POLL_DELIVERY}},
            headers=self._authorization,
        )
        if created.status_code != 201:
            raise ProviderError(f"stream creation answered {created.status_code}")
        stream = created.json()
        self.counters["streams_created"] += 1
        endpoint = stream["delivery"]["endpoint_url"]
        acks: list[str] = []
        errors: dict[str, dict[str, str]] = {}
        at_once = True  # the first poll fetches what is pending without waiting
        try:
            while True:
                answer = await self._poll(endpoint, acks, errors, at_once)
                if self.state != "healthy":
                    self.state = "healthy"
                    self._healthy()
                    log.info("Revocation events: stream %s healthy", stream.get("stream_id"))
                acks, errors = await self._apply(answer.get("sets", {}), keys, issuer)
                at_once = bool(answer.get("moreAvailable"))
        finally:  # a new stream follows: ask the provider to drop this one
            await self._forget_stream(configuration, stream.get("stream_id"))

    async def _forget_stream(self, configuration: dict[str, Any], stream_id: Any) -> None:
        try:
            await self.http.delete(
                configuration["configuration_endpoint"],
                params={"stream_id": str(stream_id)},
                headers=self._authorization,
            )
        except Exception:  # noqa: BLE001 - best effort: the janitor deletes unpolled streams
            log.debug("Could not delete event stream %s", stream_id)

    async def _poll(
        self, endpoint: str, acks: list[str], errors: dict[str, Any], at_once: bool
    ) -> dict[str, Any]:
        body = {"ack": acks, "maxEvents": 100, "returnImmediately": at_once}
        if errors:
            body["setErrs"] = errors
        response = await self.http.post(
            endpoint, json=body, headers=self._authorization, timeout=POLL_TIMEOUT
        )
        if response.status_code in (404, 409):
            raise StreamLost(f"the poll answered {response.status_code}")
        if response.status_code != 200:
            raise ProviderError(f"the poll answered {response.status_code}")
        self.last_answer_at = time.monotonic()
        answer = response.json()
        if not isinstance(answer, dict) or not isinstance(answer.get("sets", {}), dict):
            raise ValueError("the poll answer is not an RFC 8936 object")
        return answer

    async def _apply(
        self, sets: dict[str, Any], keys: KeySetCache, issuer: str
    ) -> tuple[list[str], dict[str, dict[str, str]]]:
        """Verify and apply each SET; the jtis to acknowledge and the ones refused, why."""
        acks, errors = [], {}
        for jti, value in sets.items():
            try:
                self._apply_one(*await self._verify(str(value), keys, issuer))
                acks.append(jti)
            except SetRefused as refused:
                self.counters["sets_refused"] += 1
                log.warning("Ignored a security event token: %s", refused)
                errors[jti] = {"err": refused.code, "description": str(refused)}
        return acks, errors

    async def _verify(
        self, value: str, keys: KeySetCache, issuer: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        header, claims = verified_set(value, await keys.keys_for(set_key_id(value)))
        check_set_type(header)
        check_set_issuer(claims, issuer)
        check_set_audience(claims, self.client_id)
        return header, claims

    def _apply_one(self, _header: dict[str, Any], claims: dict[str, Any]) -> None:
        toe = claims.get("toe", claims.get("iat"))
        toe = float(toe) if isinstance(toe, int | float) else time.time()
        for event_type, event in set_events(claims):
            self._evict(self.revocations.apply(event_type, event, claims.get("sub_id"), toe))
            self.counters["events_applied"] += 1
        self.last_event_lag = max(0.0, time.time() - toe)

    def metrics(self) -> dict[str, Any]:
        """Stream state, events applied and refused, and the lag of the last event."""
        since = None if self.last_answer_at is None else time.monotonic() - self.last_answer_at
        return {
            "state": self.state,
            **self.counters,
            "last_event_lag_seconds": self.last_event_lag,
            "seconds_since_last_poll_answer": since,
            **self.revocations.metrics(),
        }
