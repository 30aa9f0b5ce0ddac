"""RFC 8693 token exchange (On-Behalf-Of) and the provider's profile API (/api/profile) as the
downstream API."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import RS_AUTH, start_provider
from tests.oauth_helpers import Browser, code_for, redeem

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    handle = start_provider(tmp_path_factory.mktemp("exchange"))
    yield handle
    handle.process.stop()


@pytest.fixture(scope="module")
def alice_mcp_token(provider) -> str:
    browser = Browser(provider.url, "alice", "password123")
    code, verifier, _ = code_for(browser, scope="read write", resource=provider.resource)
    return redeem(provider.url, code, verifier, resource=provider.resource).json()["access_token"]


def exchange(provider, subject_token: str, auth=RS_AUTH, **extra) -> httpx.Response:
    data = {
        "grant_type": EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS,
        "resource": f"{provider.url}/api/profile",
        **extra,
    }
    return httpx.post(f"{provider.url}/token", data=data, auth=auth)


def profile_api(provider, token: str) -> httpx.Response:
    return httpx.get(f"{provider.url}/api/profile", headers={"Authorization": f"Bearer {token}"})


def test_downstream_api_refuses_the_mcp_token(provider, alice_mcp_token):
    response = profile_api(provider, alice_mcp_token)
    assert response.status_code == 401
    assert "audience" in response.json()["error_description"]
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def test_exchange_issues_a_downstream_token_for_the_user_acted_on_by_the_server(
    provider, alice_mcp_token
):
    response = exchange(provider, alice_mcp_token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS and "refresh_token" not in body
    assert body["scope"] == "read"
    info = httpx.post(
        f"{provider.url}/introspect", data={"token": body["access_token"]}, auth=RS_AUTH
    ).json()
    assert info["sub"] == "alice" and info["act"] == {"sub": "mcp-resource-server"}
    assert info["aud"] == f"{provider.url}/api/profile"
    profile = profile_api(provider, body["access_token"])
    assert profile.status_code == 200
    assert (
        profile.json()["username"] == "alice"
        and profile.json()["act"]["sub"] == "mcp-resource-server"
    )


def test_exchange_refuses_a_widened_scope(provider, alice_mcp_token):
    response = exchange(provider, alice_mcp_token, scope="read admin")
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


def test_exchange_refuses_clients_not_allowed_to_exchange(provider, alice_mcp_token):
    other = httpx.post(
        f"{provider.url}/register",
        json={"redirect_uris": ["https://app.example/cb"], "client_name": "not trusted"},
    ).json()
    response = exchange(
        provider, alice_mcp_token, auth=(other["client_id"], other["client_secret"])
    )
    assert response.status_code == 400 and response.json()["error"] == "unauthorized_client"
    public = httpx.post(
        f"{provider.url}/token",
        data={
            "grant_type": EXCHANGE,
            "subject_token": alice_mcp_token,
            "subject_token_type": ACCESS,
            "client_id": "mcp-client",
        },
    )
    assert public.status_code in (400, 401)


def test_exchange_refuses_unknown_audience_and_inactive_subject(provider, alice_mcp_token):
    unknown = exchange(provider, alice_mcp_token, resource="https://elsewhere.example/api")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_target"
    inactive = exchange(provider, "not-a-token")
    assert inactive.status_code == 400 and inactive.json()["error"] == "invalid_grant"
    wrong_type = exchange(provider, alice_mcp_token, subject_token_type="urn:x")
    assert wrong_type.status_code == 400 and wrong_type.json()["error"] == "invalid_request"
