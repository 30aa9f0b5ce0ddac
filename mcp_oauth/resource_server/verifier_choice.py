"""How the gate checks bearer tokens: introspection or local JWT validation, chosen once.

`ChosenVerifier` picks the mode from the provider's discovered metadata: introspection when it
names an introspection endpoint and this server has client credentials for it, otherwise JWT
when it names a `jwks_uri` (or MCP_JWKS_URL is set); MCP_TOKEN_VALIDATION forces either, and
Entra (no introspection endpoint) always means JWT. Settings that allow no check at all are
this server's fault, never the client's: they stop the server at start, or answer 503 later.

Whatever the mode, a token the provider's security events revoked (revocations.py) is refused
before its cached answer is used, and a verified token whose grant or user was revoked after
it was issued is refused too. While the event stream is healthy, accepted introspection
answers are also kept longer than the introspection cache keeps them (`keep_answers`), in a
cache indexed by grant and user so an event evicts them at once (`evict`); when events may have
been missed they are dropped, and the introspection cache's own TTL is all that remains.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal, cast

from fastmcp.server.auth import AccessToken

from mcp_oauth.resource_server.caches import IndexedAnswers
from mcp_oauth.resource_server.entra import entra_expectations
from mcp_oauth.resource_server.jwt_claims import Expectations
from mcp_oauth.resource_server.jwt_verifier import JwtVerifier
from mcp_oauth.resource_server.key_set import KeySetCache
from mcp_oauth.resource_server.provider_discovery import (
    Provider,
    ProviderMetadata,
    ProviderUnavailable,
)
from mcp_oauth.resource_server.revocations import Revocations, Revoked, token_hash
from mcp_oauth.resource_server.validation_settings import ConfigurationError, ValidationSettings
from mcp_oauth.resource_server.verified_token import CheckingVerifier, TokenRefused, VerifiedToken

log = logging.getLogger(__name__)


def choose_mode(
    settings: ValidationSettings, metadata: ProviderMetadata, *, client_credentials: bool
) -> Literal["introspection", "jwt"]:
    """Introspection when the provider offers it (RFC 8414 `introspection_endpoint`) and we can
    authenticate to it; otherwise JWT when there are keys (`jwks_uri`) to check against."""
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


def verified(access: AccessToken) -> VerifiedToken:
    """What an accepted token allows, without the token (to keep it)."""
    return VerifiedToken(
        client_id=access.client_id,
        scopes=list(access.scopes),
        subject=access.subject,
        expires_at=access.expires_at,
        resource=str(access.resource or ""),
        claims=dict(access.claims or {}),
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
        revocations: Revocations | None = None,
        kept_answers: int = 10_000,
    ):
        super().__init__()
        self.revocations = revocations
        self.kept = IndexedAnswers(kept_answers)  # see keep_answers
        self.kept_ttl = 0.0
        self.kept_hits = 0
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
            expect = entra_expectations(s.entra_tenant_id, s.entra_client_id, s.entra_app_id_uri)
        else:
            expect = Expectations.for_provider(
                metadata.issuer, self.resource_url, metadata.document
            )
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
        chosen = self.chosen
        if chosen is None:  # only until the first choice: no await per request after it
            try:
                chosen = await self.choose()
            except ConfigurationError as exc:
                log.error("Cannot check bearer tokens: %s", exc)
                raise ProviderUnavailable(str(exc), 30) from exc
        if self.revocations is None:
            return await chosen.check(token)
        hashed = token_hash(token)
        if reason := self.revocations.refusal(hashed):
            raise TokenRefused(reason)
        if self.kept_ttl > 0 and (kept := self.kept.get(hashed)) is not None:  # else empty
            self.kept_hits += 1
            return kept.access_token(token)
        access = await chosen.check(token)
        if reason := self.revocations.claims_refusal(access.claims):
            raise TokenRefused(reason)
        if self.kept_ttl > 0 and self.mode == "introspection":
            lifetime = min(self.kept_ttl, (access.expires_at or math.inf) - time.time())
            self.kept.put(hashed, verified(access), lifetime, access.claims)
        return access

    def keep_answers(self, ttl: float) -> None:
        """Keep accepted introspection answers `ttl` seconds, beyond the introspection cache's
        own TTL: only while revocations arrive as events. 0 stops, and drops what was kept
        (events may have been missed): the introspection cache's TTL rules alone apply."""
        self.kept_ttl = ttl
        if ttl <= 0:
            self.kept.clear()

    def evict(self, revoked: Revoked) -> None:
        """Drop the kept answers a revocation event names (the deny-lists refuse the rest)."""
        self.kept.evict(
            revoked.hashes,
            family=revoked.family,
            subject=revoked.subject,
            issued_before=revoked.issued_before,
        )

    def metrics(self) -> dict[str, Any]:
        """The chosen verifier's counters, and which one it is (and its cache TTL)."""
        metrics = cast(Callable[[], dict[str, Any]], getattr(self.chosen, "metrics", dict))
        kept = {
            "kept_answer_ttl": self.kept_ttl,
            "kept_answers": len(self.kept),
            "kept_answer_hits": self.kept_hits,
            "kept_answers_evicted_by_event": self.kept.evicted,
        }
        shown = self.revocations is not None and self.mode == "introspection"
        return {"mode": self.mode, **metrics(), **(kept if shown else {})}
