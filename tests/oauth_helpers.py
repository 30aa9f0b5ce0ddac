"""A browser stand-in for tests: signs in through the provider's real pages with httpx."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from mcp_oauth.client.headless import parse_page, pkce_pair

CLIENT_ID = "mcp-client"
REDIRECT_URI = "http://127.0.0.1:8976/callback"


class Browser:
    """One user agent with its cookie jar, signed in as one user."""

    def __init__(self, issuer: str, username: str | None = None, password: str | None = None):
        self.issuer = issuer
        self.http = httpx.Client(base_url=issuer, timeout=30)
        if username:
            self.sign_in(username, password)

    def form_fields(self, response: httpx.Response) -> dict:
        return dict(parse_page(response.text).forms[0].fields)

    def sign_in(self, username: str, password: str) -> httpx.Response:
        page = self.http.get("/device")
        fields = self.form_fields(page)
        fields.update(username=username, password=password)
        return self.http.post("/login", data=fields)

    def authorize(self, decision: str | None = "approve", **params) -> httpx.Response:
        """GET /authorize with params; if a consent page comes back, answer it."""
        response = self.http.get("/authorize", params=params)
        if decision is None or response.status_code != 200:
            return response
        fields = self.form_fields(response)
        fields["decision"] = decision
        return self.http.post("/authorize", data=fields)


def auth_params(
    scope: str = "read write", resource: str | None = None, **overrides
) -> tuple[dict, str]:
    """Authorization request parameters with a fresh PKCE pair; returns (params, verifier)."""
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": scope,
        "state": "xyz-state",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if resource:
        params["resource"] = resource
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}, verifier


def redirect_query(response: httpx.Response) -> dict:
    """The query of a redirect to the client: 302 after a GET, 303 after the consent POST."""
    assert response.status_code in (302, 303), response.text
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


def code_for(browser: Browser, **kwargs) -> tuple[str, str, dict]:
    params, verifier = auth_params(**kwargs)
    query = redirect_query(browser.authorize(**params))
    return query["code"], verifier, params


def redeem(issuer: str, code: str, verifier: str | None, redirect_uri: str = REDIRECT_URI, **extra):
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": CLIENT_ID,
        **extra,
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    return httpx.post(f"{issuer}/token", data=data)
