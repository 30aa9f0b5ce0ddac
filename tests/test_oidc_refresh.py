"""Refresh tokens and OpenID Connect: an openid grant gets a refresh token only with
`offline_access` (OIDC Core §11, SEP-2207; grants.refresh_token_granted), and refreshing it
answers a new ID token (§12.2, identity.OpenIDRefresh). Clients that never ask for `openid`
keep getting refresh tokens as before."""

from __future__ import annotations

import time

import httpx

from tests.oauth_helpers import Browser
from tests.test_oidc_provider import half_hash, id_token_claims, register, sign_in_tokens

OFFLINE = "openid profile offline_access"


def refresh(provider, client_id: str, refresh_token: str, **extra) -> httpx.Response:
    return httpx.post(
        f"{provider.url}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
            **extra,
        },
    )


def test_openid_without_offline_access_gets_no_refresh_token(provider, alice):
    rp = register(provider)
    body, _ = sign_in_tokens(provider, alice, rp, scope="openid profile", nonce="no-offline")
    assert "refresh_token" not in body and "id_token" in body
    assert set(body["scope"].split()) == {"openid", "profile"}


def test_openid_with_offline_access_gets_a_refresh_token(provider, alice):
    rp = register(provider)
    body, _ = sign_in_tokens(provider, alice, rp, scope=OFFLINE, nonce="offline-1")
    assert body["refresh_token"]
    assert set(body["scope"].split()) == set(OFFLINE.split())
    refreshed = refresh(provider, rp, body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert set(refreshed.json()["scope"].split()) == set(OFFLINE.split())
    assert refreshed.json()["refresh_token"]


def test_offline_access_needs_a_client_registered_for_refresh_tokens(provider, alice):
    rp = register(provider, grant_types=("authorization_code",))
    body, _ = sign_in_tokens(provider, alice, rp, scope=OFFLINE, nonce="offline-2")
    assert "refresh_token" not in body and "offline_access" not in body["scope"].split()


def test_a_client_without_openid_gets_a_refresh_token_as_before(provider, alice):
    body, _ = sign_in_tokens(
        provider, alice, "mcp-client", scope="read", resource=provider.resource
    )
    assert body["refresh_token"] and "id_token" not in body and body["scope"] == "read"


def test_a_refresh_answers_a_new_id_token_for_the_original_sign_in(provider):
    """§12.2: same iss, sub and aud; a new iat and at_hash; auth_time of the sign-in, not of
    the refresh; no nonce."""
    rp = register(provider)
    browser = Browser(provider.url, "alice", "password123")
    body, _ = sign_in_tokens(provider, browser, rp, scope=OFFLINE, nonce="refresh-id-1")
    first = id_token_claims(provider, body["id_token"])[1]
    deadline = time.monotonic() + 5
    while int(time.time()) <= first["iat"] and time.monotonic() < deadline:
        time.sleep(0.05)  # into the next second, so a new iat differs
    refreshed = refresh(provider, rp, body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    answer = refreshed.json()
    header, claims = id_token_claims(provider, answer["id_token"])
    assert header["alg"] == "RS256" and header["kid"]
    assert (claims["iss"], claims["sub"], claims["aud"]) == (first["iss"], "alice", [rp])
    assert claims["auth_time"] == first["auth_time"] < claims["iat"]
    assert claims["iat"] > first["iat"]
    assert claims["at_hash"] == half_hash(answer["access_token"])
    assert "nonce" not in claims and claims["name"] == "Alice"


def test_a_refresh_narrowed_to_no_openid_has_no_id_token(provider, alice):
    rp = register(provider)
    body, _ = sign_in_tokens(provider, alice, rp, scope=OFFLINE, nonce="narrow-1")
    refreshed = refresh(provider, rp, body["refresh_token"], scope="profile offline_access")
    assert refreshed.status_code == 200, refreshed.text
    assert "id_token" not in refreshed.json()
