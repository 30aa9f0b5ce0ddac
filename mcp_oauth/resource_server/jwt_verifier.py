"""Bearer tokens checked locally as signed JWTs (RFC 9068), beside the introspection verifier.

Some providers cannot introspect their own access tokens (Entra ID has no introspection
endpoint; node oidc-provider cannot introspect its JWT access tokens), so the resource server
may instead check a JWT against the provider's published key set (key_set.py). A token passes
when its header, signature, times, issuer and audience pass the rules of jwt_claims.py (Entra's
dialect: entra.py); tokens are never logged. verifier_choice.py decides whether this verifier
or introspection is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastmcp.server.auth import AccessToken

from mcp_oauth.resource_server.entra import entra_identity
from mcp_oauth.resource_server.jws_algorithms import (
    SignatureRefused,
    protected_header,
    verified_claims,
)
from mcp_oauth.resource_server.jwt_claims import (
    Expectations,
    header_refusal,
    scopes_of,
    time_refusal,
)
from mcp_oauth.resource_server.key_set import KeySetCache
from mcp_oauth.resource_server.verified_token import (
    CheckingVerifier,
    TokenRefused,
    VerifiedToken,
    claims_refusal,
)


def verified_token_from_jwt(
    claims: dict[str, Any], resource_url: str, *, entra: bool
) -> VerifiedToken:
    """What a JWT that passed every check allows (RFC 9068 §2.2: `sub`, `client_id`, scopes);
    Entra's tokens name user and client their own way (entra.entra_identity)."""
    if entra:
        subject, client_id, claims = entra_identity(claims)
    else:
        sub = claims.get("sub")
        subject = str(sub) if sub is not None else None
        client_id = str(claims.get("client_id") or claims.get("azp") or "")
    return VerifiedToken(
        client_id=client_id,
        scopes=scopes_of(claims),
        subject=subject,
        expires_at=int(claims["exp"]),
        resource=resource_url,
        claims=claims,
    )


class JwtVerifier(CheckingVerifier):
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
        """What the token grants; raises TokenRefused (with why) or ProviderUnavailable."""
        try:
            access = await self._check(token)
        except TokenRefused:
            self.counters["refused"] += 1
            raise
        self.counters["accepted"] += 1
        return access

    async def _check(self, token: str) -> AccessToken:
        try:
            header = protected_header(token)
        except SignatureRefused as refused:
            raise TokenRefused(f"{refused} (an opaque token needs introspection)") from None
        if reason := header_refusal(header, entra=self.expect.entra):
            raise TokenRefused(reason)
        kid = header.get("kid")
        keys = await self.keys.keys_for(kid if isinstance(kid, str) else None)
        try:
            claims = verified_claims(
                token, header, keys, where=self.keys.jwks_uri, declared=self.expect.algorithms
            )
        except SignatureRefused as refused:
            raise TokenRefused(str(refused)) from None
        reason = time_refusal(claims, now=self.now(), leeway=self.leeway) or claims_refusal(
            claims, issuers=self.expect.issuers, resources=self.expect.audiences
        )
        if reason:
            raise TokenRefused(reason)
        verified = verified_token_from_jwt(claims, self.resource_url, entra=self.expect.entra)
        if self.expect.entra and not verified.scopes:
            # Entra ID tokens share typ, iss and (often) aud with access tokens, never scp/roles.
            raise TokenRefused("token has no scp or roles claim: not an Entra access token")
        return verified.access_token(token)

    def metrics(self) -> dict[str, int]:
        """Acceptance and key set counters since start."""
        return {**self.counters, **self.keys.counters}
