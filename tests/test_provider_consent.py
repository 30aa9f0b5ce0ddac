"""The consent page is one page for both flows: a client that registered itself (RFC 7591) is
marked as unverified on /device exactly as on /authorize, and a pre-registered one is not."""

from __future__ import annotations

import re

import httpx

from tests.oauth_helpers import CLIENT_ID, REDIRECT_URI, Browser, auth_params

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MARKER = re.compile(r"<p[^>]*>[^<]*registered itself[^<]*</p>")


def register(provider, name: str) -> str:
    """A public client that registered itself for both the code and the device flow."""
    response = httpx.post(
        f"{provider.url}/register",
        json={
            "redirect_uris": [REDIRECT_URI],
            "client_name": name,
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", DEVICE_GRANT],
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["client_id"]


def device_consent_page(provider, browser: Browser, client_id: str) -> httpx.Response:
    started = httpx.post(
        f"{provider.url}/device_authorization", data={"client_id": client_id, "scope": "read"}
    )
    assert started.status_code == 200, started.text
    entry = browser.http.get("/device", params={"user_code": started.json()["user_code"]})
    consent = browser.http.post("/device", data=browser.form_fields(entry))
    assert consent.status_code == 200 and "Allow access?" in consent.text, consent.text
    return consent


def test_device_consent_marks_a_self_registered_client_as_authorize_does(provider, alice):
    client_id = register(provider, "Totally the official app")
    params, _ = auth_params(scope="read", client_id=client_id)
    on_authorize = MARKER.findall(alice.authorize(decision=None, **params).text)
    on_device = MARKER.findall(device_consent_page(provider, alice, client_id).text)
    assert len(on_authorize) == 1
    assert on_device == on_authorize


def test_device_consent_does_not_mark_a_preregistered_client(provider, alice):
    page = device_consent_page(provider, alice, CLIENT_ID)
    assert "MCP learner client" in page.text
    assert MARKER.findall(page.text) == []
