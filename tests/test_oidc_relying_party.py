"""Interop: panva's openid-client (a certified OpenID Connect relying party, pinned in
tests/peers/openid_client) signs in at our provider: discovery, authorization code + PKCE +
nonce, ID-token validation, UserInfo and refresh, with the person's sign-in and consent driven
over HTTP as a browser would. And it refuses what a relying party must refuse."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.oauth_helpers import REDIRECT_URI, Browser, auth_params, redeem, redirect_query
from tests.support import install_pinned_npm_package

RP_DIR = Path(__file__).resolve().parent / "peers" / "openid_client"
RP_TIMEOUT = 60  # seconds one sign-in may take, end to end
SIGNED_OUT_URI = "http://127.0.0.1:8976/signed-out"


@pytest.fixture(scope="module", autouse=True)
def openid_client_installed() -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, (
        f"openid-client needs Node.js >= 20 and npm on PATH; run npm ci in {RP_DIR}"
    )
    install_pinned_npm_package(RP_DIR, "openid-client")


def register(provider) -> str:
    """The relying party registers itself (RFC 7591) as a public client."""
    response = httpx.post(
        f"{provider.url}/register",
        json={
            "client_name": "openid-client relying party",
            "redirect_uris": [REDIRECT_URI],
            "post_logout_redirect_uris": [SIGNED_OUT_URI],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "scope": "openid profile email offline_access",
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["client_id"]


@pytest.fixture(scope="module")
def rp_client(provider) -> str:
    return register(provider)


def sign_in(provider, browser: Browser, client_id: str, **settings) -> dict:
    """One openid-client sign-in: it builds the authorization URL, `browser` signs in and
    consents, and the provider's redirect goes back to openid-client; its last line is the
    result (or the error it raised)."""
    config = {
        "issuer": provider.url,
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid profile email",
        **settings,
    }
    rp = subprocess.Popen(
        ["node", "rp.js", json.dumps(config)],
        cwd=RP_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(rp.stdout.readline() or "{}")
        assert "authorize" in first, (first, rp.stderr.read())
        response = browser.http.get(first["authorize"])
        if response.status_code == 200:  # the consent page
            fields = browser.form_fields(response)
            fields["decision"] = "approve"
            response = browser.http.post("/authorize", data=fields)
        assert response.status_code in (302, 303), response.text
        out, err = rp.communicate(response.headers["location"] + "\n", timeout=RP_TIMEOUT)
    finally:
        if rp.poll() is None:
            rp.kill()
            rp.wait()
    lines = out.strip().splitlines()
    assert lines, err
    return json.loads(lines[-1])


def test_openid_client_signs_in_validates_the_id_token_and_reads_userinfo(
    provider, rp_client, alice
):
    """With offline_access, a refresh token; refreshing answers a new ID token that
    openid-client validates (OIDC Core §12.2), for the same person and sign-in."""
    result = sign_in(provider, alice, rp_client, scope="openid profile email offline_access")
    assert "error" not in result, result
    claims = result["id_token_claims"]
    assert claims["iss"] == provider.url and claims["aud"] == [rp_client]
    assert claims["sub"] == "alice" and claims["nonce"]
    assert claims["email"] == "alice@example.com"
    assert result["userinfo"] == {
        "sub": "alice",
        "name": "Alice",
        "preferred_username": "alice",
        "email": "alice@example.com",
        "email_verified": True,
    }
    refreshed = result["refreshed"]
    assert set(refreshed["scope"].split()) == {"openid", "profile", "email", "offline_access"}
    assert refreshed["access_token"] is True and refreshed["refresh_token"] is True
    new_claims = refreshed["id_token_claims"]
    assert (new_claims["sub"], new_claims["aud"]) == ("alice", [rp_client])
    assert new_claims["auth_time"] == claims["auth_time"] and "nonce" not in new_claims


def test_openid_client_logout_url_ends_the_provider_session(provider, rp_client):
    """RP-Initiated Logout: openid-client's buildEndSessionUrl (the ID token as hint, its
    client_id, a registered post_logout_redirect_uri, a state) signs the person out at once and
    sends them back with the state; the next sign-in asks for the password again."""
    browser = Browser(provider.url, "alice", "password123")
    result = sign_in(provider, browser, rp_client, logout=SIGNED_OUT_URI, userinfo=False)
    assert "error" not in result, result
    response = browser.http.get(result["end_session"])
    assert response.status_code == 302, response.text
    assert response.headers["location"] == f"{SIGNED_OUT_URI}?state={result['logout_state']}"
    params, _ = auth_params(client_id=rp_client, scope="openid", nonce="after-logout")
    page = browser.http.get("/authorize", params=params)
    assert page.status_code == 200 and 'name="password"' in page.text


def test_openid_client_checks_auth_time_against_max_age(provider, rp_client, alice):
    """With max_age, openid-client requires auth_time and checks the sign-in is recent enough."""
    result = sign_in(provider, alice, rp_client, max_age=3600, userinfo=False)
    assert "error" not in result, result
    assert "refreshed" not in result  # openid without offline_access: no refresh token
    assert result["id_token_claims"]["auth_time"] <= result["id_token_claims"]["iat"]


def test_a_request_without_a_nonce_is_refused(provider, rp_client, alice):
    """openid-client sends no nonce; the provider answers invalid_request to the client."""
    result = sign_in(provider, alice, rp_client, nonce=False)
    assert result["error"]["error"] == "invalid_request", result


def test_openid_client_refuses_an_id_token_for_another_audience(provider, rp_client, alice):
    """A real ID token of ours with the same nonce, issued to another client, in place of the
    one for this one: openid-client refuses it for its audience."""
    someone_elses = id_token_of(provider, alice, register(provider), nonce="same-nonce")
    result = sign_in(provider, alice, rp_client, nonce="same-nonce", swap_id_token=someone_elses)
    assert result["error"]["cause"] == 'unexpected JWT "aud" (audience) claim value', result


def test_openid_client_refuses_an_id_token_with_another_nonce(provider, rp_client, alice):
    """A real ID token of ours for this very client, from another sign-in with another nonce,
    in place of the one answered: openid-client refuses the nonce."""
    other = id_token_of(provider, alice, rp_client, nonce="another-sign-in")
    result = sign_in(provider, alice, rp_client, nonce="this-sign-in", swap_id_token=other)
    assert result["error"]["cause"] == 'unexpected ID Token "nonce" claim value', result


def id_token_of(provider, browser: Browser, client_id: str, nonce: str) -> str:
    """An ID token of ours for `client_id`, obtained without openid-client."""
    params, verifier = auth_params(client_id=client_id, scope="openid", nonce=nonce)
    query = redirect_query(browser.authorize(**params))
    return redeem(provider.url, query["code"], verifier, client_id=client_id).json()["id_token"]


def test_userinfo_refuses_an_access_token_without_openid(provider, rp_client, alice):
    """Granted `email` but not `openid`: no ID token, and UserInfo answers insufficient_scope,
    which openid-client reports."""
    result = sign_in(provider, alice, rp_client, scope="email", nonce=False, refresh=False)
    assert result["error"].get("status") == 403, result
    assert result["error"]["challenge"]["error"] == "insufficient_scope", result
    assert result["error"]["challenge"]["scope"] == "openid", result
