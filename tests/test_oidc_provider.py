"""OpenID Connect Core for the authorization code flow (identity.py): ID tokens signed with the
provider's key, `nonce` required and echoed once, `auth_time` the sign-in, `at_hash`, profile
claims by scope; clients that never ask for `openid` get exactly what they got before."""

from __future__ import annotations

import base64
import hashlib
import html
import time

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.oauth_helpers import REDIRECT_URI, Browser, auth_params, redeem, redirect_query

IDENTITY = "openid profile email"


def register(provider, grant_types=("authorization_code", "refresh_token")) -> str:
    """A public client that registered itself (an OpenID relying party)."""
    response = httpx.post(
        f"{provider.url}/register",
        json={
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "none",
            "grant_types": list(grant_types),
            "scope": IDENTITY,
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["client_id"]


@pytest.fixture(scope="module")
def rp(provider) -> str:
    return register(provider)


def sign_in_tokens(provider, browser: Browser, client_id: str, **extra) -> tuple[dict, dict]:
    """The token response and the authorization request of one sign-in."""
    params, verifier = auth_params(client_id=client_id, **extra)
    query = redirect_query(browser.authorize(**params))
    assert "code" in query, query
    response = redeem(provider.url, query["code"], verifier, client_id=client_id)
    assert response.status_code == 200, response.text
    return response.json(), params


def id_token_claims(provider, id_token: str) -> tuple[dict, dict]:
    keys = KeySet.import_key_set(httpx.get(f"{provider.url}/jwks.json").json())
    token = jwt.decode(id_token, keys, algorithms=["RS256"])
    return token.header, token.claims


def half_hash(value: str) -> str:
    digest = hashlib.sha256(value.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def test_an_openid_sign_in_returns_a_signed_id_token_with_the_nonce_and_claims(provider, rp):
    signed_in_before = int(time.time())
    browser = Browser(provider.url, "alice", "password123")
    body, params = sign_in_tokens(provider, browser, rp, scope=IDENTITY, nonce="n-0S6_WzA2Mj")
    header, claims = id_token_claims(provider, body["id_token"])
    assert header["alg"] == "RS256" and header["kid"]
    assert claims["iss"] == provider.url
    assert claims["aud"] == [rp]
    assert claims["sub"] == "alice"
    assert claims["nonce"] == "n-0S6_WzA2Mj"
    assert claims["at_hash"] == half_hash(body["access_token"])
    assert signed_in_before <= claims["auth_time"] <= claims["iat"] < claims["exp"]
    assert claims["name"] == "Alice" and claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@example.com" and claims["email_verified"] is True
    assert set(body["scope"].split()) == set(IDENTITY.split())


def test_auth_time_is_the_sign_in_not_the_code(provider, rp):
    """auth_time is when the person signed in, not when the code was made: a code made in a
    later second than the sign-in still carries the sign-in's time."""
    browser = Browser(provider.url, "alice", "password123")
    signed_in_by = int(time.time())
    deadline = time.monotonic() + 5
    while int(time.time()) <= signed_in_by and time.monotonic() < deadline:
        time.sleep(0.05)  # into the next second of the clock the provider shares
    body, _ = sign_in_tokens(provider, browser, rp, scope="openid", nonce="auth-time-1")
    claims = id_token_claims(provider, body["id_token"])[1]
    assert claims["auth_time"] <= signed_in_by < claims["iat"]


def test_the_subject_is_stable_per_user(provider, rp, alice, bob):
    one, _ = sign_in_tokens(provider, alice, rp, scope="openid", nonce="stable-1")
    two, _ = sign_in_tokens(provider, alice, rp, scope="openid", nonce="stable-2")
    other, _ = sign_in_tokens(provider, bob, rp, scope="openid", nonce="stable-3")
    subjects = [id_token_claims(provider, b["id_token"])[1]["sub"] for b in (one, two, other)]
    assert subjects == ["alice", "alice", "bob"]


def test_claims_follow_the_scopes_granted(provider, rp, alice):
    """openid alone: `sub` and no profile or email claim (OIDC Core §5.4)."""
    body, _ = sign_in_tokens(provider, alice, rp, scope="openid", nonce="only-openid")
    claims = id_token_claims(provider, body["id_token"])[1]
    assert claims["sub"] == "alice"
    assert not {"name", "email", "email_verified", "preferred_username"} & claims.keys()


def test_consent_lists_the_identity_claims_being_released(provider, rp, alice):
    params, _ = auth_params(client_id=rp, scope=IDENTITY, nonce="consent-1")
    page = html.unescape(alice.authorize(decision=None, **params).text)
    assert 'sub = "alice"' in page
    assert 'name = "Alice", preferred_username = "alice"' in page
    assert 'email = "alice@example.com", email_verified = true' in page


def test_an_openid_request_without_a_nonce_is_refused(provider, rp, alice):
    params, _ = auth_params(client_id=rp, scope=IDENTITY)
    query = redirect_query(alice.authorize(**params))
    assert query["error"] == "invalid_request" and "code" not in query
    assert query["state"] == params["state"] and query["iss"] == provider.url


def test_a_replayed_nonce_is_refused(provider, rp, alice):
    sign_in_tokens(provider, alice, rp, scope="openid", nonce="used-once")
    params, _ = auth_params(client_id=rp, scope="openid", nonce="used-once")
    query = redirect_query(alice.authorize(**params))
    assert query["error"] == "invalid_request" and "code" not in query


def test_without_openid_there_is_no_id_token_and_no_nonce_is_needed(provider, alice):
    """An MCP client that never asks for `openid` gets exactly the answer it got before."""
    body, _ = sign_in_tokens(
        provider, alice, "mcp-client", scope="read", resource=provider.resource
    )
    assert "id_token" not in body and body["scope"] == "read"


def test_identity_scopes_are_not_resource_scopes(provider, rp, alice):
    """openid with a resource: the identity scopes are granted beside the resource's own, and
    a scope the resource accepts still follows the account's allowance."""
    body, _ = sign_in_tokens(
        provider,
        alice,
        rp,
        scope="openid email read admin",
        nonce="with-resource",
        resource=provider.resource,
    )
    assert set(body["scope"].split()) == {"openid", "email", "read"}
    assert "id_token" in body


def test_an_operators_client_gets_identity_scopes_only_when_configured(provider, alice):
    """mcp-client is configured in users.yaml for `read write admin`: openid is left out, so
    no ID token, and the rest is granted as before."""
    body, _ = sign_in_tokens(
        provider,
        alice,
        "mcp-client",
        scope="openid read",
        nonce="capped",
        resource=provider.resource,
    )
    assert body["scope"] == "read" and "id_token" not in body


# -- discovery (OpenID Connect Discovery 1.0 §3) ----------------------------------------------


def test_discovery_has_every_required_field_and_only_what_is_supported(provider):
    document = httpx.get(f"{provider.url}/.well-known/openid-configuration").json()
    for required in (
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ):
        assert document[required], required
    assert document["userinfo_endpoint"] == f"{provider.url}/userinfo"
    assert document["subject_types_supported"] == ["public"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert document["response_types_supported"] == ["code"]
    assert {"openid", "profile", "email"} <= set(document["scopes_supported"])
    assert {"sub", "name", "email", "email_verified", "nonce"} <= set(document["claims_supported"])
    # request_uri_parameter_supported defaults to true: it is not supported, so it says so
    assert document["request_uri_parameter_supported"] is False
    assert document["request_parameter_supported"] is False
    assert httpx.get(f"{provider.url}/.well-known/oauth-authorization-server").json() == document
    keys = httpx.get(document["jwks_uri"]).json()["keys"]
    assert [key["alg"] for key in keys] == ["RS256"]


# -- UserInfo (OIDC Core §5.3) ---------------------------------------------------------------


def userinfo(provider, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{provider.url}/userinfo", headers=headers)


def test_userinfo_answers_the_claims_the_scopes_allow(provider, rp, alice):
    full, _ = sign_in_tokens(provider, alice, rp, scope=IDENTITY, nonce="userinfo-1")
    answer = userinfo(provider, full["access_token"])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "sub": "alice",
        "name": "Alice",
        "preferred_username": "alice",
        "email": "alice@example.com",
        "email_verified": True,
    }
    assert answer.headers["cache-control"] == "no-store"
    only_email, _ = sign_in_tokens(provider, alice, rp, scope="openid email", nonce="userinfo-2")
    assert userinfo(provider, only_email["access_token"]).json() == {
        "sub": "alice",
        "email": "alice@example.com",
        "email_verified": True,
    }
    assert userinfo(provider, full["access_token"]).json()["sub"] == "alice"


def test_userinfo_refuses_a_token_without_openid(provider, rp, alice):
    """RFC 6750 §3.1 insufficient_scope, naming the scope needed."""
    body, _ = sign_in_tokens(provider, alice, rp, scope="email profile")
    assert "id_token" not in body
    answer = userinfo(provider, body["access_token"])
    assert answer.status_code == 403 and answer.json()["error"] == "insufficient_scope"
    assert 'scope="openid"' in answer.headers["www-authenticate"]


def test_userinfo_refuses_a_token_for_another_audience(provider, rp, alice):
    """A token bound to a resource (RFC 8707) is that resource's, even with openid in it."""
    body, _ = sign_in_tokens(
        provider, alice, rp, scope="openid read", nonce="aud-1", resource=provider.resource
    )
    answer = userinfo(provider, body["access_token"])
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
    mcp_token, _ = sign_in_tokens(provider, alice, "mcp-client", scope="read")
    assert userinfo(provider, mcp_token["access_token"]).status_code == 403


def test_userinfo_refuses_no_token_and_a_revoked_one(provider, rp, alice):
    missing = userinfo(provider, None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    body, _ = sign_in_tokens(provider, alice, rp, scope="openid", nonce="revoked-1")
    revoked = httpx.post(
        f"{provider.url}/revoke", data={"token": body["access_token"], "client_id": rp}
    )
    assert revoked.status_code == 200
    answer = userinfo(provider, body["access_token"])
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"


# -- prompt and max_age (OIDC Core §3.1.2.1) -------------------------------------------------


def is_login_page(response: httpx.Response) -> bool:
    return response.status_code == 200 and 'action="/login"' in response.text


def sign_in_again(browser: Browser, login_page: httpx.Response, password: str) -> httpx.Response:
    """Answer the login page; the browser lands where it points next."""
    fields = browser.form_fields(login_page)
    fields.update(username="alice", password=password)
    return browser.http.post("/login", data=fields, follow_redirects=True)


def test_prompt_none_without_a_session_is_login_required(provider, rp):
    params, _ = auth_params(client_id=rp, scope="openid", nonce="prompt-none-1", prompt="none")
    query = redirect_query(Browser(provider.url).http.get("/authorize", params=params))
    assert query["error"] == "login_required" and query["state"] == params["state"]


def test_prompt_none_with_a_session_is_consent_required(provider, rp, alice):
    """Consent is always asked here, so a request that allows no page cannot be answered."""
    params, _ = auth_params(client_id=rp, scope="openid", nonce="prompt-none-2", prompt="none")
    query = redirect_query(alice.http.get("/authorize", params=params))
    assert query["error"] == "consent_required" and "code" not in query


def test_prompt_login_asks_a_signed_in_person_to_sign_in_again(provider, rp):
    browser = Browser(provider.url, "alice", "password123")
    first, _ = sign_in_tokens(provider, browser, rp, scope="openid", nonce="prompt-login-1")
    first_sign_in = id_token_claims(provider, first["id_token"])[1]["auth_time"]
    params, verifier = auth_params(
        client_id=rp, scope="openid", nonce="prompt-login-2", prompt="login"
    )
    page = browser.http.get("/authorize", params=params)
    assert is_login_page(page)
    consent = sign_in_again(browser, page, "password123")
    fields = browser.form_fields(consent)
    assert "prompt" not in fields and fields["nonce"] == "prompt-login-2"
    fields["decision"] = "approve"
    query = redirect_query(browser.http.post("/authorize", data=fields))
    body = redeem(provider.url, query["code"], verifier, client_id=rp).json()
    assert id_token_claims(provider, body["id_token"])[1]["auth_time"] >= first_sign_in


def test_max_age_forces_a_fresh_sign_in_once_the_session_is_older(provider, rp):
    browser = Browser(provider.url, "alice", "password123")
    recent, _ = auth_params(client_id=rp, scope="openid", nonce="max-age-1", max_age="3600")
    assert not is_login_page(browser.http.get("/authorize", params=recent))
    params, _ = auth_params(client_id=rp, scope="openid", nonce="max-age-2", max_age="0")
    deadline = time.monotonic() + 5  # max_age 0: stale from the next second on
    page = browser.http.get("/authorize", params=params)
    while not is_login_page(page) and time.monotonic() < deadline:
        time.sleep(0.2)
        page = browser.http.get("/authorize", params=params)
    assert is_login_page(page)
    consent = sign_in_again(browser, page, "password123")
    assert "max_age" not in browser.form_fields(consent)


def test_a_malformed_max_age_is_invalid_request(provider, rp, alice):
    params, _ = auth_params(client_id=rp, scope="openid", nonce="max-age-3", max_age="soon")
    query = redirect_query(alice.http.get("/authorize", params=params))
    assert query["error"] == "invalid_request"


def test_login_hint_fills_in_the_username_of_the_sign_in_form(provider, rp):
    params, _ = auth_params(client_id=rp, scope="openid", nonce="hint-1", login_hint="bob")
    page = Browser(provider.url).http.get("/authorize", params=params)
    assert is_login_page(page) and Browser(provider.url).form_fields(page)["username"] == "bob"
