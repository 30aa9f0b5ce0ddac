"""Minting access and refresh tokens: opaque by default, RFC 9068 JWT access tokens when asked,
and the claims a token carries, the same whether read from a JWT or from introspection.

Opaque tokens are 256-bit random strings; only their hash is stored. A JWT access token is
signed with the provider's RS256 key (joserfc) and is *also* stored by hash, so introspection
and revocation work the same for both formats.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from joserfc import jwt
from joserfc.jwk import RSAKey

from mcp_oauth.provider.hashed_secrets import new_secret
from mcp_oauth.provider.records import IssuedToken, TokenFamily


@dataclass(frozen=True)
class TokenLifetimes:
    access: int = 3600
    refresh: int = 30 * 24 * 3600
    refresh_grace: int = 30  # seconds a rotated refresh token may be retried (0: never)


class TokenSubject(Protocol):
    """Who and what a token is for: a TokenFamily about to be minted, or a stored TokenRecord."""

    family_id: str
    client_id: str
    username: str | None
    scope: str
    resource: str | None


def act_claim(actors: Sequence[str]) -> dict:
    """RFC 8693 §4.1: the current actor, with the earlier ones nested inside it."""
    claim = {"sub": actors[0]}
    if len(actors) > 1:
        claim["act"] = act_claim(actors[1:])
    return claim


def token_claims(
    issuer_url: str,
    token: TokenSubject,
    issued_at: int,
    expires_at: int,
    actors: Sequence[str] = (),
) -> dict:
    """The claims of an access token: RFC 9068 §2.2 in a JWT, RFC 7662 §2.2 in introspection.
    `sub` is the user, or the client itself for client_credentials; `act` (RFC 8693 §4.1)
    names the clients that exchanged the token, nearest first. `sid` names its family (the one
    sign-in, refresh chain or client_credentials request it came from), which revocation
    events name too (security_event_tokens.py)."""
    claims = {
        "iss": issuer_url,
        "sub": token.username or token.client_id,
        "sid": token.family_id,
        "client_id": token.client_id,
        "iat": issued_at,
        "exp": expires_at,
        "scope": token.scope,
    }
    if token.username:
        claims["username"] = token.username
    if token.resource:
        claims["aud"] = token.resource
    if actors:
        claims["act"] = act_claim(actors)
    return claims


class TokenMinter:
    """Makes the tokens of one family and the token endpoint's answer (RFC 6749 §5.1)."""

    def __init__(
        self,
        issuer_url: str,
        lifetimes: TokenLifetimes,
        access_token_format: str,
        signing_key: RSAKey,
    ):
        self.issuer_url = issuer_url
        self.lifetimes = lifetimes
        self.access_token_format = access_token_format
        self.signing_key = signing_key

    def mint(
        self,
        family: TokenFamily,
        *,
        with_refresh: bool,
        refresh_scope: str | None = None,
        actors: Sequence[str] = (),
        expires_at_most: int | None = None,
    ) -> tuple[dict, list[IssuedToken]]:
        """The token endpoint's JSON answer and the tokens to store, for one family. An
        exchanged token names its `actors` and ends no later than `expires_at_most`, its
        subject token's end (RFC 8693 §2.2.1 lets the server choose the lifetime)."""
        scope = family.scope
        issued_at = int(time.time())
        access_expires = issued_at + self.lifetimes.access
        if expires_at_most is not None:
            access_expires = min(access_expires, expires_at_most)
        if self.access_token_format == "jwt":
            access = self._jwt_access_token(family, issued_at, access_expires, actors)
        else:
            access = new_secret()
        issued = [IssuedToken(access, "access", access_expires, scope)]
        response = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": access_expires - issued_at,
            "scope": scope,
        }
        if with_refresh:
            refresh = new_secret()
            refresh_scope = refresh_scope or scope
            issued.append(
                IssuedToken(refresh, "refresh", issued_at + self.lifetimes.refresh, refresh_scope)
            )
            response["refresh_token"] = refresh
        return response, issued

    def _jwt_access_token(
        self, family: TokenFamily, issued_at: int, expires_at: int, actors: Sequence[str]
    ) -> str:
        claims = token_claims(self.issuer_url, family, issued_at, expires_at, actors)
        claims["jti"] = str(uuid.uuid4())
        header = {"alg": "RS256", "typ": "at+jwt", "kid": self.signing_key.kid}
        return jwt.encode(header, claims, self.signing_key)

    def public_jwks(self) -> dict:
        return {"keys": [self.signing_key.as_dict(private=False, use="sig", alg="RS256")]}
