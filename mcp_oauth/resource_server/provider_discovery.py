"""The authorization server as the resource server sees it: found by discovery, called with
the resource server's own client credentials, and given room to recover when it is down.

The provider is configured by its issuer URL alone. Every endpoint comes from its RFC 8414
metadata (OpenID discovery as a fallback), so a provider that keeps introspection elsewhere,
such as Keycloak's /realms/<name>/protocol/openid-connect/token/introspect, works unchanged.
A provider whose document lives elsewhere is given a metadata URL as well; the issuer the
document names must still be the configured one, because tokens are checked against it.
Discovery is lazy: the resource server starts while the provider is down and looks again on
first need. After a failure, calls fail fast for a growing pause (1 s, 2 s, 4 s … 30 s), so an
outage costs callers nothing but a 503 with Retry-After instead of a pile of timeouts.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import httpx

from mcp_oauth.common.oauth_errors import oauth_error, refusal_reason
from mcp_oauth.common.text import printable
from mcp_oauth.resource_server.fastmcp_internals import metadata_discovery_urls
from mcp_oauth.resource_server.form_poster import Answer, ExchangeFailed, FormPoster

log = logging.getLogger(__name__)
Reply = TypeVar("Reply", httpx.Response, Answer)


class ProviderError(Exception):
    """The authorization server refused a request; the message says why."""


class ProviderUnavailable(ProviderError):
    """The authorization server cannot answer now; the caller should retry after a pause."""

    def __init__(self, reason: str, retry_after: int):
        super().__init__(reason)
        self.retry_after = retry_after


class IntrospectionRefused(ProviderError):
    """The provider would not introspect this one token: a refusal of the token, which says
    nothing about the provider's health or this server's credentials."""


CREDENTIAL_ERRORS = ("invalid_client", "unauthorized_client")


def blames_the_token(status: int, error: str | None) -> bool:
    """Whether a non-200 introspection answer refuses the token it was asked about: a 400, 413
    or 414 (the request carrying it was bad or too big). Not when it names this server's
    client authentication (RFC 7662 §2.1; RFC 6749 §5.2 `invalid_client`, which some providers
    send with a 400), nor a 401/403 (our credentials), 404/405 (a wrong endpoint) or 429 (the
    provider asks this server to slow down): those are outages for every token alike."""
    return status in (400, 413, 414) and error not in CREDENTIAL_ERRORS


def introspection_outage(status: int, error: str | None) -> str:
    """What the operator should read in the log when introspection answers `status` for
    reasons that are not the token's (see blames_the_token)."""
    said = f"HTTP {status}" + (f" {error}" if error else "")
    if status in (401, 403) or error in CREDENTIAL_ERRORS:
        return (
            f"introspection refused this server's own credentials ({said}); "
            "check MCP_RS_CLIENT_ID and MCP_RS_CLIENT_SECRET"
        )
    if status == 429:
        return f"introspection is rate limited ({said}): the provider asks us to slow down"
    return f"introspection answered {said}; check the provider's introspection_endpoint"


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The `Authorization` value for client_secret_basic: RFC 6749 §2.3.1 form-urlencodes both
    parts before the Basic encoding (RFC 7617)."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def proxied(url: str) -> bool:
    """Whether the environment sends requests to `url` through a proxy (as httpx honours
    HTTP(S)_PROXY and NO_PROXY): such calls stay on httpx, which speaks to proxies."""
    proxies = urllib.request.getproxies()
    parts = urlsplit(url)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


@dataclass(frozen=True)
class ProviderMetadata:
    """The provider's metadata document, and the parts of it this resource server uses.

    Every endpoint is optional: what the provider offers decides how tokens are checked
    (introspection or local JWT validation) and which tools can work.
    """

    issuer: str
    """Exactly as the provider states it (RFC 8414 §3.3): advertised and compared verbatim."""
    document: dict[str, Any]
    introspection_endpoint: str | None
    jwks_uri: str | None
    token_endpoint: str | None
    admin_grants_endpoint: str
    admin_revoke_user_endpoint: str

    @classmethod
    def from_document(cls, document: Any, expected_issuer: str) -> ProviderMetadata:
        if not isinstance(document, dict):
            raise ValueError("metadata is not a JSON object")
        issuer = document.get("issuer")
        if not isinstance(issuer, str) or issuer.rstrip("/") != expected_issuer.rstrip("/"):
            raise ValueError(f"metadata names issuer {issuer!r}, expected {expected_issuer!r}")

        def url(name: str, default: str | None = None) -> str | None:
            value = document.get(name, default)
            return value if isinstance(value, str) and value else None

        # The admin API is this project's extension: advertised when the provider says so,
        # otherwise at its documented place under the issuer.
        base = issuer.rstrip("/")
        return cls(
            issuer=issuer,
            document=document,
            introspection_endpoint=url("introspection_endpoint"),
            jwks_uri=url("jwks_uri"),
            token_endpoint=url("token_endpoint"),
            admin_grants_endpoint=url("admin_grants_endpoint") or f"{base}/admin/grants",
            admin_revoke_user_endpoint=url("admin_revoke_user_endpoint")
            or f"{base}/admin/revoke-user",
        )


def introspection_endpoint(metadata: ProviderMetadata) -> str:
    """Where to introspect; the verifier choice makes sure there is such an endpoint, and none
    is ever guessed."""
    if metadata.introspection_endpoint is None:
        raise ProviderUnavailable(f"{metadata.issuer} has no introspection_endpoint", 30)
    return metadata.introspection_endpoint


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
    """Metadata discovery, token introspection, token exchange and the admin API of one
    authorization server.

    Every call authenticates as the resource server (client_secret_basic unless the provider
    documents otherwise); a user's token is only ever sent to this provider, as the thing
    being asked about or exchanged.
    """

    def __init__(
        self,
        issuer_url: str,
        client_id: str,
        client_secret: str,
        http: httpx.AsyncClient,
        backoff: Backoff | None = None,
        *,
        metadata_url: str | None = None,
    ):
        self.issuer_url = issuer_url
        self.metadata_url = metadata_url
        """Where the metadata document is, when not at a well-known URL of the issuer."""
        self.http = http
        self._credentials = {"client_id": client_id, "client_secret": client_secret}
        self._authorization = {"Authorization": basic_authorization(client_id, client_secret)}
        self._backoff = backoff or Backoff()
        self._metadata: ProviderMetadata | None = None
        self._discovering = asyncio.Lock()
        self._introspection_poster: FormPoster | None = None  # see _poster

    async def metadata(self) -> ProviderMetadata:
        """The provider's metadata, discovered on first need and kept once found."""
        if self._metadata is None:
            async with self._discovering:  # concurrent first needs share one discovery
                if self._metadata is None:
                    self._metadata = await self._discover()
                    log.info(
                        "Discovered authorization server %s (introspection %s, jwks_uri %s)",
                        self._metadata.issuer,
                        self._metadata.introspection_endpoint,
                        self._metadata.jwks_uri,
                    )
        return self._metadata

    async def _discover(self) -> ProviderMetadata:
        problems = []
        for url in (
            [self.metadata_url] if self.metadata_url else metadata_discovery_urls(self.issuer_url)
        ):
            response = await self._send("GET", url, auth=False)
            if response.status_code != 200:
                problems.append(f"{url} answered {response.status_code}")
                continue
            try:
                return ProviderMetadata.from_document(response.json(), self.issuer_url)
            except ValueError as exc:  # also a body that is not JSON
                problems.append(f"{url}: {exc}")
        raise self.unavailable("no usable metadata: " + "; ".join(problems))

    @property
    def client_id(self) -> str:
        """This resource server's client id at the provider."""
        return self._credentials["client_id"]

    async def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 answer for `token`; raises IntrospectionRefused when the provider refuses
        to look at that token, ProviderUnavailable for anything else rather than guess.
        The cache-miss path: sent by the lean keep-alive client (form_poster.py)."""
        metadata = await self.metadata()
        poster = self._poster(introspection_endpoint(metadata))
        if poster is None:
            response = await self.introspection_response(token)
            return self._json_object(response, response.request.url)
        form = urlencode({"token": token, "token_type_hint": "access_token"}).encode()
        answer = await self._post(poster, form)
        if answer.status != 200:
            raise self._introspection_refusal(metadata, answer.status, answer)
        return self._json_object(answer, poster.url)

    async def introspection_response(
        self, token: str, accept: str = "application/json"
    ) -> httpx.Response:
        """The provider's 200 answer about `token`, in the media type asked for (RFC 9701 §4:
        application/token-introspection+jwt for a signed one); raises as `introspect` does."""
        metadata = await self.metadata()
        endpoint = introspection_endpoint(metadata)
        data = {"token": token, "token_type_hint": "access_token"}
        response = await self._send("POST", endpoint, data=data, headers={"Accept": accept})
        if response.status_code == 200:
            return response
        raise self._introspection_refusal(metadata, response.status_code, response)

    def _introspection_refusal(
        self, metadata: ProviderMetadata, status: int, response: Answer | httpx.Response
    ) -> ProviderError:
        """What a non-200 introspection answer means: the token refused, or an outage."""
        error = oauth_error(response)
        code = printable(error[0], 40) if error else None
        if blames_the_token(status, code):
            # The provider's description is not repeated: it may quote the token.
            said = f"HTTP {status}" + (f" {code}" if code else "")
            return IntrospectionRefused(f"{metadata.issuer} would not introspect it ({said})")
        # Not the token's fault: no client is sent to log in again (that would loop).
        return self.unavailable(introspection_outage(status, code))

    async def token(
        self, form: dict[str, str], *, credentials_in_body: bool = False
    ) -> dict[str, Any]:
        """The token endpoint's answer to `form`, authenticated as this server: HTTP Basic, or
        client_id and client_secret in the body where the provider documents that (Entra)."""
        metadata = await self.metadata()
        if metadata.token_endpoint is None:
            raise ProviderError(f"{metadata.issuer} advertises no token_endpoint")
        if credentials_in_body:
            form = {**form, **self._credentials}
        response = await self._send(
            "POST", metadata.token_endpoint, data=form, auth=not credentials_in_body
        )
        return self._answer(response)

    async def active_grants(self) -> dict[str, Any]:
        """The admin API's list of active grants."""
        endpoint = (await self.metadata()).admin_grants_endpoint
        return self._answer(await self._send("GET", endpoint))

    async def revoke_user(self, username: str) -> dict[str, Any]:
        """Revoke every token of `username` through the admin API."""
        endpoint = (await self.metadata()).admin_revoke_user_endpoint
        return self._answer(await self._send("POST", endpoint, data={"username": username}))

    def _answer(self, response: httpx.Response) -> dict[str, Any]:
        """A JSON object from a 200, or ProviderError with the provider's own reason
        (RFC 6749 §5.2)."""
        if response.status_code == 200:
            return self._json_object(response, response.request.url)
        reason = refusal_reason(response) or response.status_code
        raise ProviderError(f"the authorization server refused: {reason}")

    def _json_object(self, response: Answer | httpx.Response, url: object) -> dict[str, Any]:
        """The body, decoded once, as a JSON object; else the provider is unavailable."""
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise self.unavailable(f"{url} did not answer a JSON object")
        return answer

    async def _send(
        self, method: str, url: str, *, auth: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One request to the provider through the shared httpx client (see _guarded)."""
        if auth:
            kwargs["headers"] = {**kwargs.get("headers", {}), **self._authorization}
        return await self._guarded(
            f"{method} {url}", lambda: self.http.request(method, url, **kwargs)
        )

    def _poster(self, endpoint: str) -> FormPoster | None:
        """The keep-alive client for the introspection endpoint, made on first use with this
        server's credentials and the shared client's timeout; None when a proxy must be used."""
        poster = self._introspection_poster
        if poster is None or poster.url != endpoint:
            if proxied(endpoint):
                return None
            headers = {**self._authorization, "Accept": "application/json"}
            timeout = self.http.timeout.read or 5.0
            tls = httpx.create_ssl_context() if endpoint.startswith("https:") else None  # as httpx
            poster = FormPoster(endpoint, headers, timeout=timeout, ssl_context=tls)
            self._introspection_poster = poster
        return poster

    async def _post(self, poster: FormPoster, form: bytes) -> Answer:
        """One introspection through the lean keep-alive client (see _guarded)."""
        return await self._guarded(f"POST {poster.url}", lambda: poster.post(form))

    async def _guarded(self, what: str, exchange: Callable[[], Awaitable[Reply]]) -> Reply:
        """The one home of the outage rule, for every call to the provider: refused at once
        while a failure pause lasts; a transport failure or a 5xx starts the next pause (the
        caller answers 503); any other answer ends the pause."""
        if pause := self._backoff.remaining():
            raise ProviderUnavailable("authorization server recently failed", math.ceil(pause))
        try:
            reply = await exchange()
        except (httpx.HTTPError, ExchangeFailed) as exc:
            raise self.unavailable(f"{what} failed: {exc!r}") from exc
        if reply.status_code >= 500:
            raise self.unavailable(f"{what} answered {reply.status_code}")
        self._backoff.succeeded()
        return reply

    async def aclose(self) -> None:
        """Close the introspection client's idle connections (the shared httpx client is
        closed by its owner)."""
        if self._introspection_poster is not None:
            await self._introspection_poster.aclose()

    def unavailable(self, reason: str) -> ProviderUnavailable:
        """ProviderUnavailable for `reason`, logged, after starting the next failure pause."""
        retry_after = self._backoff.failed()
        log.warning("Authorization server unavailable (%s); retrying in %d s", reason, retry_after)
        return ProviderUnavailable(reason, retry_after)
