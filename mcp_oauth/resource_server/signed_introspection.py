"""Signed introspection answers (RFC 9701), used wherever the provider offers them.

A provider whose metadata lists asymmetric `introspection_signing_alg_values_supported` is asked
for `application/token-introspection+jwt`, and its answer counts only once verified:
- signed by a key of its own key set (`jwks_uri`), under the algorithm rules of
  jws_algorithms.py (never `none` or HMAC, each algorithm bound to its key's type);
- `typ` token-introspection+jwt (RFC 9701 §5), so no other JWT of the provider can pass;
- `iss` exactly the provider's issuer;
- `iat` present and within the leeway of now, so an old answer cannot be replayed;
- `token_introspection` a JSON object: the RFC 7662 answer, judged as any other (introspection.py);
- `aud` naming this resource server: its client id, as RFC 9701 §5 asks, or its resource URL.
  Glewlwyd 2.7.5 puts the token's own audience there, so its answer about a token for another
  resource names that resource: an answer addressed elsewhere refuses the token (a 401).
Having asked for a signed answer, nothing else is taken: an unsigned or unverifiable answer is
provider trouble (ProviderUnavailable, a 503), never an acceptance and never the token's fault.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from mcp_oauth.resource_server.jws_algorithms import (
    KEY_TYPES,
    SignatureRefused,
    protected_header,
    verified_claims,
)
from mcp_oauth.resource_server.key_set import KeySetCache
from mcp_oauth.resource_server.provider_discovery import (
    IntrospectionRefused,
    Provider,
    ProviderMetadata,
)
from mcp_oauth.resource_server.verified_token import audiences

SIGNED_ANSWER = "application/token-introspection+jwt"
WHAT = "introspection answer"


def offered_algorithms(document: Mapping[str, Any]) -> frozenset[str]:
    """The asymmetric algorithms the provider signs introspection answers with (RFC 9701 §6
    `introspection_signing_alg_values_supported`); empty when it offers none we would accept."""
    values = document.get("introspection_signing_alg_values_supported")
    if not isinstance(values, list):
        return frozenset()
    return frozenset(v for v in values if isinstance(v, str)) & KEY_TYPES.keys()


def signed_answer_refusal(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    *,
    issuer: str,
    now: float,
    leeway: float,
) -> str | None:
    """Why a verified JWT is not a fresh introspection answer of `issuer` (RFC 9701 §5); None
    if it is."""
    typ = str(header.get("typ", "")).lower().removeprefix("application/")
    if typ != "token-introspection+jwt":
        return f"{WHAT} typ {header.get('typ')!r} is not token-introspection+jwt"
    if claims.get("iss") != issuer:
        return f"{WHAT} issuer {claims.get('iss')!r} is not {issuer}"
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or not math.isfinite(iat):
        return f"{WHAT} has no numeric iat"
    if abs(now - iat) > leeway:
        return f"{WHAT} was issued at {iat}, not now ({int(now)})"
    if not isinstance(claims.get("token_introspection"), dict):
        return f"{WHAT} has no token_introspection object"
    return None


def audience_refusal(claims: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    """Why a signed answer is not addressed to this server (RFC 9701 §5 `aud`); None if it is.
    `names`: this server's client id and resource URL (a trailing slash names the same URL)."""
    said = {aud.rstrip("/") for aud in audiences(claims.get("aud"))}
    if not said & {name.rstrip("/") for name in names}:
        return f"{WHAT} audience {claims.get('aud')!r} is not this server ({' or '.join(names)})"
    return None


class SignedAnswers:
    """Asks the provider for signed answers and returns the RFC 7662 answer inside, verified."""

    def __init__(
        self,
        provider: Provider,
        metadata: ProviderMetadata,
        keys: KeySetCache,
        resource_url: str,
        *,
        leeway: float = 60.0,
        now: Callable[[], float] = time.time,
    ):
        self.provider = provider
        self.issuer = metadata.issuer
        self.algorithms = offered_algorithms(metadata.document)
        self.keys = keys
        self.names = (provider.client_id, resource_url)
        self.leeway = leeway
        self.now = now

    @classmethod
    def offered_by(
        cls, provider: Provider, metadata: ProviderMetadata, resource_url: str
    ) -> SignedAnswers | None:
        """Signed answers when the provider's metadata offers them and names its key set."""
        if not offered_algorithms(metadata.document) or metadata.jwks_uri is None:
            return None
        return cls(provider, metadata, KeySetCache(metadata.jwks_uri, provider.http), resource_url)

    async def introspect(self, token: str) -> dict[str, Any]:
        """The verified RFC 7662 answer about `token`; raises as Provider.introspect does,
        ProviderUnavailable for an answer that is not signed as promised, and
        IntrospectionRefused for one addressed to someone else."""
        response = await self.provider.introspection_response(token, accept=SIGNED_ANSWER)
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != SIGNED_ANSWER:
            raise self.provider.unavailable(f"asked for a signed {WHAT}, got {media_type!r}")
        try:
            return await self.verified(response.text)
        except SignatureRefused as refused:
            raise self.provider.unavailable(f"signed {WHAT} refused: {refused}") from None

    async def verified(self, compact: str) -> dict[str, Any]:
        """The `token_introspection` object of a signed answer that passes every rule above;
        SignatureRefused (saying why) otherwise."""
        header = protected_header(compact, WHAT)
        kid = header.get("kid")
        keys = await self.keys.keys_for(kid if isinstance(kid, str) else None)
        claims = verified_claims(
            compact, header, keys, where=self.keys.jwks_uri, declared=self.algorithms, what=WHAT
        )
        if reason := signed_answer_refusal(
            header, claims, issuer=self.issuer, now=self.now(), leeway=self.leeway
        ):
            raise SignatureRefused(reason)
        if reason := audience_refusal(claims, self.names):
            raise IntrospectionRefused(reason)
        return claims["token_introspection"]
