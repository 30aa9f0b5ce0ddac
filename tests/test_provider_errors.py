"""Bad input is a 400; a bug is a 500 in the log. The one ValueError the provider turns into a
400 is Authlib refusing to put characters RFC 6749 §5.2 forbids into an error description."""

from __future__ import annotations

import logging

import pytest
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from starlette.testclient import TestClient

import oauth_provider
from mcp_oauth.provider.authorization_server import authlib_refused_error_text
from mcp_oauth.provider.endpoints import ClientRegistration
from mcp_oauth.provider.token_lookup_endpoints import TokenLookupEndpoints


def raised(action) -> ValueError:
    with pytest.raises(ValueError) as caught:
        action()
    return caught.value


def test_authlib_still_refuses_forbidden_characters_in_an_error_description():
    """The fence around Authlib's behaviour: if an upgrade stops raising ValueError inside
    OAuth2Error.__init__, this fails and authlib_refused_error_text must be revisited."""
    refusal = raised(lambda: InvalidRequestError('grant_type "x\\y" is unknown'))
    assert authlib_refused_error_text(refusal)


def test_any_other_value_error_is_not_mistaken_for_that_refusal():
    def bug():
        raise ValueError("an internal bug")

    assert not authlib_refused_error_text(raised(bug))
    assert not authlib_refused_error_text(raised(lambda: int("not a number")))


@pytest.fixture
def app_client(tmp_path, monkeypatch) -> TestClient:
    monkeypatch.setenv("MCP_RS_CLIENT_SECRET", "test-secret")
    settings = oauth_provider.parse_settings(
        ["--database-url", f"sqlite:///{tmp_path}/oauth.db", "--issuer", "http://localhost"]
    )
    with TestClient(
        oauth_provider.build_app(settings), "http://localhost", raise_server_exceptions=False
    ) as client:
        yield client


def test_an_internal_value_error_is_a_500_in_the_log_not_a_400(app_client, monkeypatch, caplog):
    def bug(self, request):
        raise ValueError("an internal bug")

    monkeypatch.setattr(ClientRegistration, "extract_client_metadata", bug)
    with caplog.at_level(logging.ERROR, logger="oauth_provider"):
        response = app_client.post("/register", json={"redirect_uris": ["https://a.example/cb"]})
    assert response.status_code == 500 and response.json() == {"error": "server_error"}
    logged = [r for r in caplog.records if r.getMessage() == "unexpected error on POST /register"]
    assert logged and "an internal bug" in str(logged[0].exc_info[1])


def test_an_unexpected_error_past_the_router_is_a_500_in_the_log(app_client, monkeypatch, caplog):
    """The busiest JSON endpoints skip the router (json_endpoints.JsonRoutes): a bug there is
    still the application's 500, logged, its text never shown."""

    async def bug(self, request):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(TokenLookupEndpoints, "introspect", bug)
    with caplog.at_level(logging.ERROR, logger="oauth_provider"):
        response = app_client.post("/introspect", data={"token": "x" * 43})
    assert response.status_code == 500 and response.json() == {"error": "server_error"}
    logged = [r for r in caplog.records if r.getMessage() == "unexpected error on POST /introspect"]
    assert logged and "an internal bug" in str(logged[0].exc_info[1])


def test_authlib_refusing_its_own_error_text_is_a_400(app_client):
    """Authlib echoes an unknown redirect_uri in its error description; one with a quote is
    text RFC 6749 forbids there, and the answer is still the 400 page the bad link deserves."""
    params = {
        "response_type": "code",
        "client_id": "mcp-client",
        "redirect_uri": 'https://a.example/"cb',
        "code_challenge": "x" * 43,
        "code_challenge_method": "S256",
    }
    response = app_client.get("/authorize", params=params)
    assert response.status_code == 400, response.text
    assert "characters that are not allowed" in response.text
