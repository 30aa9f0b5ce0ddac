"""OpenID Connect Core 1.0 for the authorization code flow: the identity scopes, the claims
each releases, and Authlib's OpenIDCode extension bound to the provider's signing key.

`openid`, `profile` and `email` are identity scopes (OIDC Core §5.4): they release claims
about the person signing in, not access to a resource, so (like `offline_access`) they belong
to no resource and no account allowance in users.yaml; the person grants them on the
consent page (scope_policy.py). The subject identifier is the username: stable per user and
the same `sub` the access tokens carry (OIDC Core §8, public subject type).
"""

from __future__ import annotations

import json
import time

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error, scope_to_list
from authlib.oidc.core import UserInfo
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError
from authlib.oidc.core.grants import OpenIDCode as AuthlibOpenIDCode
from authlib.oidc.core.grants import OpenIDToken
from authlib.oidc.core.grants.util import is_openid_scope

from mcp_oauth.provider.users_file import Account

OPENID = "openid"
# OIDC Core §5.4: the claims each identity scope releases (those users.yaml can hold).
SCOPE_CLAIMS = {
    OPENID: ("sub",),
    "profile": ("name", "preferred_username"),
    "email": ("email", "email_verified"),
}
IDENTITY_SCOPES = frozenset(SCOPE_CLAIMS)
ID_TOKEN_ALG = "RS256"
ID_TOKEN_LIFETIME = 3600


def supported_claims() -> list[str]:
    """Every claim an ID token or UserInfo may carry (Discovery §3 claims_supported)."""
    registered = ("iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash")
    return list(dict.fromkeys([*registered, *(c for cs in SCOPE_CLAIMS.values() for c in cs)]))


def released_claims(scope: str, account: Account) -> str:
    """What granting an identity scope releases, with this account's values, as the consent
    page lists it (the claims of SCOPE_CLAIMS)."""
    claims = user_claims(account, scope)
    shown = ", ".join(f"{claim} = {json.dumps(value)}" for claim, value in claims.items())
    return f"receive these facts about you: {shown}" if shown else "receive nothing about you"


def user_claims(account: Account, scope: str) -> UserInfo:
    """OIDC Core §5.4: `sub`, and the claims of each identity scope in `scope` that the
    account has (an absent profile claim is left out, never sent empty)."""
    values = {
        "sub": account.username,
        "name": account.name,
        "preferred_username": account.username,
        "email": account.email,
        "email_verified": account.email_verified if account.email else None,
    }
    granted = set(scope_to_list(scope) or [])
    return UserInfo(
        {
            claim: values[claim]
            for name, claims in SCOPE_CLAIMS.items()
            if name in granted
            for claim in claims
            if values[claim] is not None
        }
    )


# What asks for a sign-in younger than the session's (left out of the sign-in's way back).
FRESH_SIGN_IN_PARAMETERS = ("prompt", "max_age")


def check_max_age(data: dict) -> None:
    """OIDC Core §3.1.2.1: `max_age` is a number of seconds (a non-negative integer)."""
    max_age = data.get("max_age")
    if max_age is not None and not (max_age.isascii() and max_age.isdigit()):
        raise InvalidRequestError("max_age must be a number of seconds")


def login_hint(data: dict) -> str:
    """OIDC Core §3.1.2.1: the username an openid request suggests for the sign-in form (a
    suggestion only: the person may sign in as anyone)."""
    return (data.get("login_hint") or "")[:200] if is_openid_scope(data.get("scope")) else ""


def sign_in_demand(data: dict, signed_in_at: int | None, now: int) -> OAuth2Error | bool | None:
    """OIDC Core §3.1.2.1, for an openid request by a signed-in person: the error to answer
    (`prompt=none`, which shows no page: login_required when the sign-in is older than
    `max_age`, else consent_required, since consent is always asked here), True when a fresh
    sign-in is needed (`prompt=login`, or a sign-in older than `max_age`), else None."""
    if not is_openid_scope(data.get("scope")):
        return None
    prompts = (data.get("prompt") or "").split()
    max_age = data.get("max_age")
    too_old = max_age is not None and (signed_in_at or 0) + int(max_age) < now
    if "none" in prompts:
        error = LoginRequiredError if too_old else ConsentRequiredError
        return error(redirect_uri=data.get("redirect_uri"), state=data.get("state"))
    return True if too_old or "login" in prompts else None


class ProviderIdTokens:
    """What every ID token here shares: signed RS256 with the provider's key (`kid` in its
    header), the issuer, the client as the only audience (so no `azp` is required, OIDC Core
    §2), the lifetime, and the claims of the granted identity scopes."""

    def __init__(self, issuer_url: str, minter, codes):
        self.issuer_url = issuer_url
        self.minter = minter
        self.codes = codes

    def resolve_client_private_key(self, client):
        return self.minter.signing_key

    def get_client_algorithm(self, client) -> str:
        return ID_TOKEN_ALG

    def get_encode_header(self, client) -> dict:
        return {"alg": ID_TOKEN_ALG, "kid": self.minter.signing_key.kid}

    def get_client_claims(self, client) -> dict:
        return {
            "iss": self.issuer_url,
            "aud": [client.get_client_id()],
            "exp": int(time.time()) + ID_TOKEN_LIFETIME,
        }

    def generate_user_info(self, user: Account, scope: str) -> UserInfo:
        return user_claims(user, scope)


class OpenIDCode(ProviderIdTokens, AuthlibOpenIDCode):
    """Authlib's OpenID Connect extension of the authorization code grant: an ID token beside
    the access token whenever the code was granted `openid`, with the code's `nonce` and
    `auth_time` and the access token's `at_hash` (OIDC Core §3.1.3.6). A `nonce` is required
    in every openid request and may be used once per client (§3.1.2.1, §15.5.2)."""

    def __init__(self, issuer_url: str, minter, codes):
        AuthlibOpenIDCode.__init__(self, require_nonce=True)
        ProviderIdTokens.__init__(self, issuer_url, minter, codes)

    def validate_openid_authorization_request(self, grant, redirect_uri):
        super().validate_openid_authorization_request(grant, redirect_uri)
        check_max_age(grant.request.payload.data)

    def exists_nonce(self, nonce: str, request) -> bool:
        return self.codes.nonce_used(request.payload.client_id, nonce)


class OpenIDRefresh(ProviderIdTokens, OpenIDToken):
    """OIDC Core §12.2: refreshing a grant of `openid` answers a new ID token (Authlib's
    OpenIDToken extension on the refresh grant): the same iss, sub and aud, a new iat and
    at_hash, and the time of the original sign-in as auth_time (from the code that started
    the grant), never the refresh's. No nonce: a refresh is no authentication request, and
    the client already saw the original nonce once (§12.2 as clarified, OpenID issue 1025)."""

    def get_compatible_claims(self, request) -> dict:
        claims = super().get_compatible_claims(request)
        auth_time = self.codes.auth_time_of_grant(request.refresh_token.family_id)
        if auth_time is None:  # a grant that did not start with a sign-in here
            claims.pop("auth_time", None)
        else:
            claims["auth_time"] = auth_time
        return claims
