"""What every token verifier hands the gate: a VerifiedToken, or TokenRefused saying why.

Introspection and local JWT validation differ in how they learn what a token says, not in what
they demand of it: both apply `claims_refusal` (issuer and audience) and both produce a
VerifiedToken, which FastMCP sees as its AccessToken.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from fastmcp.server.auth import AccessToken, TokenVerifier


class TokenRefused(Exception):
    """A token this server does not accept; the message says why, for logs and error_description."""


class CheckingVerifier(TokenVerifier):
    """A FastMCP token verifier that can say why it refuses a token."""

    async def check(self, token: str) -> AccessToken:
        """What the token grants; raises TokenRefused (with why) or ProviderUnavailable."""
        raise NotImplementedError

    async def verify_token(self, token: str) -> AccessToken | None:
        """FastMCP's interface: what the token grants, or None when refused."""
        try:
            return await self.check(token)
        except TokenRefused:
            return None


def audiences(aud: object) -> list[str]:
    """`aud` as a list: RFC 7662 §2.2 and RFC 7519 §4.1.3 allow one string or an array."""
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [item for item in aud if isinstance(item, str)]
    return []


def claims_refusal(
    claims: Mapping[str, Any], *, issuers: Collection[str], resources: Collection[str]
) -> str | None:
    """Why `iss` or `aud` is not ours; None if both are. The issuer is compared verbatim
    (RFC 8414 §3.3), the audience (RFC 8707 §2) ignoring a trailing slash (the same URL)."""
    if claims.get("iss") not in issuers:
        return f"token issuer {claims.get('iss')!r} is not {' or '.join(issuers)}"
    wanted = {resource.rstrip("/") for resource in resources}
    if not any(aud.rstrip("/") in wanted for aud in audiences(claims.get("aud"))):
        return f"token audience {claims.get('aud')!r} is not this server ({' or '.join(resources)})"
    return None


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What an accepted token allows. Cached in place of the provider's answer, without the
    token itself, which is handed back per request by `access_token`."""

    client_id: str
    scopes: list[str]
    subject: str | None
    expires_at: int | None
    resource: str
    claims: dict[str, Any]

    @classmethod
    def from_introspection(cls, answer: dict[str, Any], resource: str) -> VerifiedToken:
        """From an active RFC 7662 §2.2 answer (already checked by the introspection rules)."""
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
        """The FastMCP view for one request (fields known valid: no re-validation)."""
        return AccessToken.model_construct(
            token=token,
            client_id=self.client_id,
            scopes=self.scopes,
            expires_at=self.expires_at,
            resource=self.resource,
            subject=self.subject,
            claims=self.claims,
        )
