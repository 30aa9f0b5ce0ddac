"""Offline access as the MCP 2026-07-28 revision describes it (SEP-2207): the provider issues
refresh tokens, so it lists `offline_access` in scopes_supported and a client asking for it
(registered for the refresh_token grant) gets a refresh token, after a consent page that
says what it means. A client that does not ask still gets one when registered for the
refresh_token grant (OAuth 2.1: the registration says it; MCP clients that do not ask keep
working). `offline_access` alone grants nothing."""

from __future__ import annotations

import re

import httpx

from tests.oauth_helpers import auth_params, redeem, redirect_query
from tests.test_provider_scopes import offered, page_text, register


def tokens(provider, browser, client_id: str, scope: str, **extra) -> dict:
    params, verifier = auth_params(
        scope=scope, client_id=client_id, resource=provider.resource, **extra
    )
    query = redirect_query(browser.authorize(**params))
    response = redeem(
        provider.url, query["code"], verifier, client_id=client_id, resource=provider.resource
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_offline_access_is_advertised(provider):
    metadata = httpx.get(f"{provider.url}/.well-known/oauth-authorization-server").json()
    assert "offline_access" in metadata["scopes_supported"]
    assert "refresh_token" in metadata["grant_types_supported"]


def test_asking_offline_access_gets_a_refresh_token_after_consent_says_what_it_means(
    provider, alice
):
    client_id = register(provider, None)
    params, _ = auth_params(
        scope="read offline_access", client_id=client_id, resource=provider.resource
    )
    consent = alice.authorize(decision=None, **params)
    assert offered(consent) == {"read", "offline_access"}
    assert "keep this access while you are away" in page_text(consent)
    # prompt=consent is what the MCP SDK adds with offline_access (OIDC Core §11).
    issued = tokens(provider, alice, client_id, "read offline_access", prompt="consent")
    assert issued["refresh_token"] and issued["scope"] == "offline_access read"
    refreshed = httpx.post(
        f"{provider.url}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": issued["refresh_token"],
            "client_id": client_id,
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["scope"] == "offline_access read"


def test_a_client_not_registered_for_refresh_is_told_why_offline_access_is_left_out(
    provider, alice
):
    client_id = register(provider, None, ("authorization_code",))
    params, _ = auth_params(
        scope="read offline_access", client_id=client_id, resource=provider.resource
    )
    consent = alice.authorize(decision=None, **params)
    assert offered(consent) == {"read"}
    assert "offline_access: this application is not registered for refresh tokens" in page_text(
        consent
    )
    issued = tokens(provider, alice, client_id, "read offline_access")
    assert "refresh_token" not in issued and issued["scope"] == "read"


def test_a_client_that_does_not_ask_still_gets_a_refresh_token(provider, alice):
    client_id = register(provider, None)
    issued = tokens(provider, alice, client_id, "read")
    assert issued["refresh_token"] and issued["scope"] == "read"


def test_offline_access_alone_grants_nothing(provider, bob):
    """bob may not write: `write offline_access` leaves nothing to allow, and the page says
    it is his account."""
    client_id = register(provider, None)
    params, _ = auth_params(
        scope="write offline_access", client_id=client_id, resource=provider.resource
    )
    consent = bob.authorize(decision=None, **params)
    assert offered(consent) == set()
    assert "write: your account may not grant it" in page_text(consent)
    assert re.search(r'value="approve"\s+disabled', consent.text)
    assert redirect_query(bob.authorize(**params))["error"] == "invalid_scope"
