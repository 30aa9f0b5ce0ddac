"""Minting access and refresh tokens: opaque by default, RFC 9068 JWT access tokens when asked.

Opaque tokens are 256-bit random strings; only their hash is stored. A JWT access token is
signed with the provider's RS256 key (joserfc) and is *also* stored by hash, so introspection
and revocation work the same for both formats.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from joserfc import jwt
from joserfc.jwk import RSAKey

from mcp_oauth.provider.storage import GrantSpec, IssuedToken, new_secret


@dataclass(frozen=True)
class TokenLifetimes:
    access: int = 3600
    refresh: int = 30 * 24 * 3600


class TokenIssuer:
    def __init__(
        self,
        issuer: str,
        lifetimes: TokenLifetimes,
        access_token_format: str,
        signing_key: RSAKey,
    ):
        self.issuer = issuer
        self.lifetimes = lifetimes
        self.access_token_format = access_token_format
        self.signing_key = signing_key

    def issue(
        self, grant: GrantSpec, *, with_refresh: bool, refresh_scope: str | None = None
    ) -> tuple[dict, list[IssuedToken]]:
        """The token endpoint's JSON answer and the tokens to store, for one grant."""
        scope = grant.scope
        issued_at = int(time.time())
        access_expires = issued_at + self.lifetimes.access
        if self.access_token_format == "jwt":
            access = self._jwt_access_token(grant, issued_at, access_expires)
        else:
            access = new_secret()
        issued = [IssuedToken(access, "access", access_expires, scope)]
        response = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.lifetimes.access,
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

    def _jwt_access_token(self, grant: GrantSpec, issued_at: int, expires_at: int) -> str:
        claims = {
            "iss": self.issuer,
            "sub": grant.username or grant.client_id,
            "client_id": grant.client_id,
            "iat": issued_at,
            "exp": expires_at,
            "jti": str(uuid.uuid4()),
            "scope": grant.scope,
        }
        if grant.resource:
            claims["aud"] = grant.resource
        if grant.username:
            claims["username"] = grant.username
        if grant.actor:
            claims["act"] = {"sub": grant.actor}
        header = {"alg": "RS256", "typ": "at+jwt", "kid": self.signing_key.kid}
        return jwt.encode(header, claims, self.signing_key)

    def public_jwks(self) -> dict:
        return {"keys": [self.signing_key.as_dict(private=False, use="sig", alg="RS256")]}
