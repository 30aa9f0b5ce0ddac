"""The authorization server over real HTTP, on SQLite and on PostgreSQL. Negative cases first."""

from __future__ import annotations

import base64
import re
import time

import httpx
import pytest

from tests.conftest import RS_AUTH
from tests.oauth_helpers import (
    CLIENT_ID,
    REDIRECT_URI,
    Browser,
    auth_params,
    code_for,
    redeem,
    redirect_query,
)


def introspect(provider, token: str, auth=RS_AUTH) -> dict:
    response = httpx.post(f"{provider.url}/introspect", data={"token": token}, auth=auth)
    assert response.status_code == 200, response.text
    return response.json()


def tokens_for(provider, browser: Browser, **kwargs) -> dict:
    code, verifier, params = code_for(browser, **kwargs)
    extra = {"resource": params["resource"]} if "resource" in params else {}
    response = redeem(provider.url, code, verifier, **extra)
    assert response.status_code == 200, response.text
    return response.json()


# -- PKCE (RFC 7636, RFC 9700 §2.1.1) ------------------------------------------------------


def test_missing_pkce_is_refused_by_redirect(provider, alice):
    params, _ = auth_params(code_challenge=None, code_challenge_method=None)
    query = redirect_query(alice.authorize(**params))
    assert query["error"] == "invalid_request"
    assert "code_challenge" in query["error_description"]
    assert query["state"] == "xyz-state" and query["iss"] == provider.url


def test_plain_pkce_is_refused(provider, alice):
    params, verifier = auth_params()
    params.update(code_challenge=verifier, code_challenge_method="plain")
    query = redirect_query(alice.authorize(**params))
    assert query["error"] == "invalid_request"
    assert "S256" in query["error_description"]


def test_missing_challenge_method_is_refused(provider, alice):
    params, _ = auth_params(code_challenge_method=None)
    assert redirect_query(alice.authorize(**params))["error"] == "invalid_request"


def test_wrong_verifier_fails(provider, alice):
    code, _, _ = code_for(alice)
    other_verifier = "x" * 64
    response = redeem(provider.url, code, other_verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_redeeming_without_verifier_fails(provider, alice):
    code, _, _ = code_for(alice)
    response = redeem(provider.url, code, None)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


# -- codes: single use, bound to client and redirect_uri ----------------------------------


def test_code_replay_fails_and_revokes_tokens_issued_from_it(provider, alice):
    code, verifier, _ = code_for(alice)
    first = redeem(provider.url, code, verifier)
    assert first.status_code == 200
    token = first.json()["access_token"]
    assert introspect(provider, token)["active"] is True
    replay = redeem(provider.url, code, verifier)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert introspect(provider, token) == {"active": False}
    assert introspect(provider, first.json()["refresh_token"]) == {"active": False}


def test_code_is_bound_to_redirect_uri(provider, alice):
    code, verifier, _ = code_for(alice)
    response = redeem(provider.url, code, verifier, redirect_uri="http://127.0.0.1:9999/callback")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_code_is_bound_to_client(provider, alice):
    registered = httpx.post(
        f"{provider.url}/register",
        json={"redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "none"},
    ).json()
    code, verifier, _ = code_for(alice)
    response = httpx.post(
        f"{provider.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": registered["client_id"],
            "code_verifier": verifier,
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


# -- redirect_uri: exact matching, error page and never a redirect -----------------------


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:8976/callback/",
        "http://127.0.0.1:8976/callback?x=1",
        "http://127.0.0.1:8976/other",
        "http://evil.example/callback",
        "http://127.0.0.1:8976@evil.example/callback",
        "http://evil@127.0.0.1:8976/callback",
        "https://127.0.0.1:8976/callback",
    ],
)
def test_redirect_uri_mismatch_shows_error_page_without_redirect(provider, alice, redirect_uri):
    params, _ = auth_params(redirect_uri=redirect_uri)
    response = alice.authorize(decision=None, **params)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "text/html" in response.headers["content-type"]
    assert "not supported" in response.text


def test_unknown_client_shows_error_page(provider, alice):
    params, _ = auth_params(client_id="no-such-client")
    response = alice.authorize(decision=None, **params)
    assert response.status_code == 400 and "location" not in response.headers


def test_loopback_redirect_uri_may_use_any_port(provider, alice):
    code, verifier, _ = code_for(alice, redirect_uri="http://127.0.0.1:54321/callback")
    response = redeem(provider.url, code, verifier, redirect_uri="http://127.0.0.1:54321/callback")
    assert response.status_code == 200


# -- no implicit flow, no password grant (RFC 9700 §2.1.2, §2.4) ------------------------


def test_implicit_flow_does_not_exist(provider, alice):
    params, _ = auth_params(response_type="token")
    query = redirect_query(alice.authorize(decision=None, **params))
    assert query["error"] == "unsupported_response_type"


def test_password_grant_does_not_exist(provider):
    response = httpx.post(
        f"{provider.url}/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "password123",
            "client_id": CLIENT_ID,
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"


# -- scopes and resources ------------------------------------------------------------------


def test_user_gets_only_scopes_users_yaml_allows(provider, bob):
    assert tokens_for(provider, bob, scope="read write admin")["scope"] == "read"


def test_user_asking_only_for_forbidden_scope_gets_invalid_scope(provider, bob):
    params, _ = auth_params(scope="admin")
    query = redirect_query(bob.authorize(**params))
    assert query["error"] == "invalid_scope" and query["state"] == "xyz-state"


def test_unknown_scope_is_refused(provider, alice):
    params, _ = auth_params(scope="read launch-missiles")
    assert redirect_query(alice.authorize(decision=None, **params))["error"] == "invalid_scope"


def test_unknown_resource_gets_invalid_target(provider, alice):
    params, _ = auth_params(resource="http://elsewhere.example/mcp")
    query = redirect_query(alice.authorize(decision=None, **params))
    assert query["error"] == "invalid_target"


def test_resource_becomes_the_audience(provider, alice):
    tokens = tokens_for(provider, alice, resource=provider.resource)
    info = introspect(provider, tokens["access_token"])
    assert info["aud"] == provider.resource
    assert info["iss"] == provider.url and info["username"] == "alice" and info["sub"] == "alice"
    assert set(info) >= {"active", "scope", "client_id", "exp", "iat", "token_type"}


def test_token_request_cannot_switch_resource(provider, alice):
    code, verifier, _ = code_for(alice, resource=provider.resource)
    response = redeem(provider.url, code, verifier, resource="http://localhost:8000/mcp")
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"


# -- refresh tokens: rotation, replay, never wider -----------------------------------------


def refresh(provider, refresh_token: str, **extra) -> httpx.Response:
    return httpx.post(
        f"{provider.url}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": CLIENT_ID,
            **extra,
        },
    )


def test_refresh_replay_revokes_the_family(provider, alice):
    """Once the rotated refresh token has been used, the old one is a replay whatever the
    refresh grace (test_refresh_grace covers a retry inside it): the family is revoked."""
    first = tokens_for(provider, alice)
    rotated = refresh(provider, first["refresh_token"])
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    third = refresh(provider, second["refresh_token"]).json()
    replay = refresh(provider, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert introspect(provider, third["access_token"]) == {"active": False}
    assert refresh(provider, third["refresh_token"]).status_code == 400


def test_refresh_cannot_widen_scope(provider, bob, alice):
    tokens = tokens_for(provider, alice, scope="read")
    response = refresh(provider, tokens["refresh_token"], scope="read write")
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


def test_refresh_may_narrow_scope_and_keeps_the_refresh_scope(provider, alice):
    tokens = tokens_for(provider, alice, scope="read write")
    narrowed = refresh(provider, tokens["refresh_token"], scope="read").json()
    assert narrowed["scope"] == "read"
    assert refresh(provider, narrowed["refresh_token"], scope="read write").status_code == 200


# -- token endpoint hygiene -----------------------------------------------------------------


def test_token_responses_are_not_cached(provider, alice):
    code, verifier, _ = code_for(alice)
    ok = redeem(provider.url, code, verifier)
    bad = redeem(provider.url, "nope", verifier)
    for response in (ok, bad):
        assert response.headers["cache-control"] == "no-store"


def test_token_errors_follow_rfc6749_section_5_2(provider):
    response = httpx.post(
        f"{provider.url}/token",
        data={"grant_type": "client_credentials"},
        auth=("mcp-resource-server", "wrong"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    form = {"content-type": "application/x-www-form-urlencoded"}
    missing = httpx.post(f"{provider.url}/token", content=b"", headers=form)
    assert missing.status_code == 400 and missing.json()["error"] == "unsupported_grant_type"
    not_a_form = httpx.post(f"{provider.url}/token", json={"grant_type": "client_credentials"})
    assert not_a_form.status_code == 400 and not_a_form.json()["error"] == "invalid_request"


def test_duplicated_parameters_are_refused(provider):
    response = httpx.post(
        f"{provider.url}/token",
        content="grant_type=client_credentials&grant_type=client_credentials",
        headers={"content-type": "application/x-www-form-urlencoded"},
        auth=RS_AUTH,
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_client_credentials_for_confidential_clients_only(provider):
    ok = httpx.post(
        f"{provider.url}/token",
        data={"grant_type": "client_credentials", "scope": "read", "resource": provider.resource},
        auth=RS_AUTH,
    )
    assert ok.status_code == 200 and "refresh_token" not in ok.json()
    assert introspect(provider, ok.json()["access_token"])["aud"] == provider.resource
    public = httpx.post(
        f"{provider.url}/token", data={"grant_type": "client_credentials", "client_id": CLIENT_ID}
    )
    assert public.status_code in (400, 401) and public.json()["error"] in (
        "invalid_client",
        "unauthorized_client",
    )


def test_tokens_are_distinct_base64url_strings_of_256_bits(provider, alice):
    """Each token is 32 bytes in base64url (RFC 6749 §10.10: not guessable), and no two
    issued tokens are alike, nor share a prefix a counter or a timestamp would leave."""
    answers = [tokens_for(provider, alice) for _ in range(3)]
    values = [answer[kind] for answer in answers for kind in ("access_token", "refresh_token")]
    assert len(values) == 6 and len(set(values)) == 6  # three access and three refresh tokens
    for value in values:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", value), value
        assert len(base64.urlsafe_b64decode(value + "=")) == 32
    assert len({value[:8] for value in values}) == 6


# -- introspection and revocation ------------------------------------------------------------


def test_introspection_requires_client_authentication(provider, alice):
    token = tokens_for(provider, alice)["access_token"]
    response = httpx.post(f"{provider.url}/introspect", data={"token": token})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    public = httpx.post(f"{provider.url}/introspect", data={"token": token, "client_id": CLIENT_ID})
    assert public.status_code in (400, 401)


def test_introspection_by_a_client_that_is_not_a_resource_server(provider, alice):
    other = httpx.post(
        f"{provider.url}/register",
        json={"redirect_uris": ["https://app.example/cb"], "client_name": "web app"},
    ).json()
    token = tokens_for(provider, alice)["access_token"]
    answer = introspect(provider, token, auth=(other["client_id"], other["client_secret"]))
    assert answer == {"active": False}


def test_unknown_token_introspects_exactly_inactive(provider):
    assert introspect(provider, "not-a-token") == {"active": False}


def test_revoking_refresh_token_revokes_its_access_tokens(provider, alice):
    tokens = tokens_for(provider, alice)
    response = httpx.post(
        f"{provider.url}/revoke", data={"token": tokens["refresh_token"], "client_id": CLIENT_ID}
    )
    assert response.status_code == 200
    assert introspect(provider, tokens["access_token"]) == {"active": False}


def test_revoking_unknown_token_is_200_and_needs_client_auth(provider):
    ok = httpx.post(f"{provider.url}/revoke", data={"token": "unknown", "client_id": CLIENT_ID})
    assert ok.status_code == 200
    anonymous = httpx.post(f"{provider.url}/revoke", data={"token": "unknown"})
    assert anonymous.status_code in (400, 401) and anonymous.json()["error"] == "invalid_client"


# -- pages ------------------------------------------------------------------------------------


def test_login_page_fields_and_security_headers(provider):
    browser = Browser(provider.url)
    params, _ = auth_params()
    page = browser.http.get("/authorize", params=params)
    assert page.status_code == 200
    assert 'name="username"' in page.text and 'autocomplete="username"' in page.text
    assert 'name="password"' in page.text and 'autocomplete="current-password"' in page.text
    assert 'name="csrf_token"' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie


def test_login_without_csrf_token_is_refused(provider):
    browser = Browser(provider.url)
    browser.http.get("/device")
    response = browser.http.post(
        "/login", data={"username": "alice", "password": "password123", "next": "/device"}
    )
    assert response.status_code == 400 and "expired" in response.text


def test_wrong_password_and_unknown_user_get_the_same_message(provider):
    browser = Browser(provider.url)
    wrong = browser.sign_in("alice", "nope")
    unknown = browser.sign_in("mallory", "nope")
    assert wrong.status_code == unknown.status_code == 401
    assert (
        "Wrong username or password." in wrong.text
        and "Wrong username or password." in unknown.text
    )


def test_consent_page_names_client_host_and_scopes_and_deny_redirects(provider, alice):
    params, _ = auth_params(scope="read write")
    page = alice.authorize(decision=None, **params)
    assert "MCP learner client" in page.text and "127.0.0.1:8976" in page.text
    assert "<code>read</code>" in page.text and "<code>write</code>" in page.text
    query = redirect_query(alice.authorize(decision="deny", **params))
    assert query["error"] == "access_denied" and "code" not in query
    assert query["state"] == "xyz-state" and query["iss"] == provider.url


def test_approval_redirects_with_code_state_and_iss(provider, alice):
    params, _ = auth_params()
    query = redirect_query(alice.authorize(**params))
    assert set(query) == {"code", "state", "iss"} and query["iss"] == provider.url


def test_consent_without_csrf_is_refused(provider, alice):
    params, _ = auth_params()
    response = alice.http.post("/authorize", data={**params, "decision": "approve"})
    assert response.status_code == 400 and "location" not in response.headers


def test_next_after_login_cannot_leave_the_provider(provider):
    browser = Browser(provider.url)
    fields = browser.form_fields(browser.http.get("/device"))
    fields.update(username="alice", password="password123", next="//evil.example/")
    response = browser.http.post("/login", data=fields)
    assert response.status_code == 303 and response.headers["location"] == "/device"


# -- metadata and registration ---------------------------------------------------------------


def test_metadata_documents(provider):
    rfc8414 = httpx.get(f"{provider.url}/.well-known/oauth-authorization-server").json()
    oidc = httpx.get(f"{provider.url}/.well-known/openid-configuration").json()
    assert rfc8414 == oidc
    assert rfc8414["issuer"] == provider.url
    assert rfc8414["scopes_supported"] == [
        *("read", "write", "admin"),  # the resources' scopes (users.yaml)
        *("openid", "profile", "email", "offline_access"),  # identity.py, SEP-2207
    ]
    assert rfc8414["response_types_supported"] == ["code"]
    assert rfc8414["code_challenge_methods_supported"] == ["S256"]
    assert rfc8414["authorization_response_iss_parameter_supported"] is True
    for key in (
        "authorization",
        "token",
        "introspection",
        "revocation",
        "registration",
        "device_authorization",
    ):
        assert rfc8414[f"{key}_endpoint"].startswith(provider.url)
    assert "password" not in rfc8414["grant_types_supported"]
    assert "implicit" not in rfc8414["grant_types_supported"]


def test_dynamic_registration_as_mcp_clients_do_it(provider, alice):
    response = httpx.post(
        f"{provider.url}/register",
        json={
            "client_name": "Acme notes desktop",  # not like an operator's client (mcp-client)
            "redirect_uris": ["http://127.0.0.1/callback"],
            "token_endpoint_auth_method": "none",
            "application_type": "native",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "made_up_metadata": {"ignored": True},
        },
    )
    assert response.status_code == 201, response.text
    client = response.json()
    assert "client_secret" not in client and "made_up_metadata" not in client
    code, verifier, _ = code_for(
        alice, client_id=client["client_id"], redirect_uri="http://127.0.0.1:40000/callback"
    )
    token = httpx.post(
        f"{provider.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "http://127.0.0.1:40000/callback",
            "client_id": client["client_id"],
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200


@pytest.mark.parametrize(
    "uri",
    [
        "http://app.example/cb",
        "https://app.example/cb#frag",
        "javascript:alert(1)",
        "https://user@app.example/cb",
        "myapp:/cb",
        "com.example.app:/cb",
    ],
)
def test_registration_refuses_unsafe_redirect_uris(provider, uri):
    response = httpx.post(
        f"{provider.url}/register",
        json={"redirect_uris": [uri], "token_endpoint_auth_method": "none"},
    )
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")


def test_registration_refuses_non_json(provider):
    response = httpx.post(
        f"{provider.url}/register",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


# -- device authorization (RFC 8628) ---------------------------------------------------------


def device_start(provider, scope="read write") -> dict:
    response = httpx.post(
        f"{provider.url}/device_authorization",
        data={"client_id": CLIENT_ID, "scope": scope, "resource": provider.resource},
    )
    assert response.status_code == 200, response.text
    return response.json()


def device_poll(provider, device_code: str) -> httpx.Response:
    return httpx.post(
        f"{provider.url}/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": device_code,
            "client_id": CLIENT_ID,
        },
    )


def device_decide(browser: Browser, user_code: str, decision: str) -> httpx.Response:
    page = browser.http.get("/device", params={"user_code": user_code})
    fields = browser.form_fields(page)
    consent = browser.http.post("/device", data=fields)
    fields = browser.form_fields(consent)
    fields["decision"] = decision
    return browser.http.post("/device", data=fields)


def test_device_flow_pending_slow_down_then_tokens(provider, alice):
    grant = device_start(provider)
    assert grant["verification_uri"] == f"{provider.url}/device"
    first = device_poll(provider, grant["device_code"])
    assert first.json()["error"] == "authorization_pending"
    too_fast = device_poll(provider, grant["device_code"])
    assert too_fast.status_code == 400 and too_fast.json()["error"] == "slow_down"
    assert "Device connected" in device_decide(alice, grant["user_code"], "approve").text
    time.sleep(grant["interval"] + 5)  # slow_down added 5 s to the interval
    tokens = device_poll(provider, grant["device_code"])
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["scope"] == "read write"
    assert introspect(provider, tokens.json()["access_token"])["aud"] == provider.resource
    assert device_poll(provider, grant["device_code"]).json()["error"] == "invalid_grant"


def test_device_flow_denied(provider, bob):
    grant = device_start(provider)
    device_decide(bob, grant["user_code"], "deny")
    assert device_poll(provider, grant["device_code"]).json()["error"] == "access_denied"


# -- durability ------------------------------------------------------------------------------


def test_restart_keeps_tokens_and_clients(provider, alice):
    tokens = tokens_for(provider, alice)
    registered = httpx.post(
        f"{provider.url}/register",
        json={"redirect_uris": ["https://app.example/cb"], "client_name": "kept"},
    ).json()
    provider.restart()
    assert introspect(provider, tokens["access_token"])["active"] is True
    assert refresh(provider, tokens["refresh_token"]).status_code == 200
    answer = introspect(provider, "x", auth=(registered["client_id"], registered["client_secret"]))
    assert answer == {"active": False}  # the client still authenticates after the restart


# -- admin API for resource servers --------------------------------------------------------


def test_admin_api_lists_and_revokes_for_resource_servers_only(provider, bob):
    token = tokens_for(provider, bob, scope="read")["access_token"]
    denied = httpx.get(f"{provider.url}/admin/grants")
    assert denied.status_code == 401
    grants = httpx.get(f"{provider.url}/admin/grants", auth=RS_AUTH).json()["grants"]
    assert any(g["username"] == "bob" for g in grants)
    revoked = httpx.post(
        f"{provider.url}/admin/revoke-user", data={"username": "bob"}, auth=RS_AUTH
    )
    assert revoked.status_code == 200 and revoked.json()["revoked"] >= 1
    assert introspect(provider, token) == {"active": False}


# -- details of client authentication and registration ---------------------------------------


def test_confidential_clients_may_send_their_secret_in_the_body(provider, alice):
    token = tokens_for(provider, alice)["access_token"]
    response = httpx.post(
        f"{provider.url}/introspect",
        data={"token": token, "client_id": RS_AUTH[0], "client_secret": RS_AUTH[1]},
    )
    assert response.status_code == 200 and response.json()["active"] is True


def test_token_type_hint_is_only_a_hint(provider, alice):
    tokens = tokens_for(provider, alice)
    response = httpx.post(
        f"{provider.url}/revoke",
        data={
            "token": tokens["refresh_token"],
            "token_type_hint": "made_up",
            "client_id": CLIENT_ID,
        },
    )
    assert response.status_code == 200
    assert introspect(provider, tokens["access_token"]) == {"active": False}


def test_registered_client_names_are_short_and_marked_unverified(provider, alice):
    too_long = httpx.post(
        f"{provider.url}/register",
        json={
            "redirect_uris": [REDIRECT_URI],
            "client_name": "x" * 201,
            "token_endpoint_auth_method": "none",
        },
    )
    assert too_long.status_code == 400 and too_long.json()["error"] == "invalid_client_metadata"
    client = httpx.post(
        f"{provider.url}/register",
        json={
            "redirect_uris": [REDIRECT_URI],
            "client_name": "Notes helper",
            "token_endpoint_auth_method": "none",
        },
    ).json()
    params, _ = auth_params(client_id=client["client_id"])
    page = alice.authorize(decision=None, **params)
    assert "registered itself" in page.text
    own = alice.authorize(decision=None, **auth_params()[0])
    assert "registered itself" not in own.text
