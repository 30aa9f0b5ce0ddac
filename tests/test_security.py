"""Security and robustness of the authorization server (issue 6), over real HTTP.

Builds on tests/test_provider.py (which covers the basic cases) and does not repeat it:
RFC 9700 attacks (redirect URI matching, PKCE, code and refresh token binding, no implicit
flow, no open redirect, `iss`, no-store), the sign-in pages (throttling, timing, CSRF,
headers, cookies, logs), bad input at every endpoint, and restarts.

When this suite finds a protection missing, the test that shows it is committed with
xfail(strict=True, reason=<what is wrong and the fix>): the suite stays green, and turns red
(XPASS) the day the protection lands, so the mark goes with the fix. SECURITY.md maps every
promise to the test that checks it.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import psycopg
import pytest
import sqlalchemy
from sqlalchemy import delete, select, update

from mcp_oauth.provider.hashed_secrets import secret_hash
from mcp_oauth.provider.storage.schema import authorization_codes, login_failures, tokens
from tests.conftest import POSTGRES_ADMIN_URL, RS_AUTH, RS_SECRET, Provider, start_provider
from tests.oauth_helpers import (
    CLIENT_ID,
    REDIRECT_URI,
    Browser,
    auth_params,
    code_for,
    redeem,
    redirect_query,
)

FORM = {"content-type": "application/x-www-form-urlencoded"}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
OTHER_RESOURCE = "http://localhost:8000/mcp"  # the resource users.yaml knows besides ours


# -- helpers shared with test_concurrency.py and test_replicas.py -----------------------------

# One client for plain calls: making an httpx.Client costs ~50 ms (its TLS context), and no
# keep-alive, because a 5xx makes uvicorn close the connection under the next request.
HTTP = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))

_addresses = itertools.count(1)


def fake_address() -> str:
    """A client address of its own for each failed sign-in a test makes.

    uvicorn trusts X-Forwarded-For from 127.0.0.1 (its default forwarded_allow_ips), so a test
    can pick the address the provider sees. Without this, every failed sign-in would count
    against 127.0.0.1, which all test modules share on the session's PostgreSQL database.
    """
    n = next(_addresses) + (uuid.uuid4().int % 1000) * 10_000
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def introspect(url: str, token: str, auth=RS_AUTH) -> dict:
    response = HTTP.post(f"{url}/introspect", data={"token": token}, auth=auth)
    assert response.status_code == 200, response.text
    return response.json()


def refresh(url: str, refresh_token: str, client_id: str = CLIENT_ID, **extra) -> httpx.Response:
    return HTTP.post(
        f"{url}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
            **extra,
        },
    )


def tokens_for(url: str, browser: Browser, **kwargs) -> dict:
    code, verifier, params = code_for(browser, **kwargs)
    extra = {"resource": params["resource"]} if "resource" in params else {}
    response = redeem(url, code, verifier, **extra)
    assert response.status_code == 200, response.text
    return response.json()


def register(url: str, **metadata) -> dict:
    response = HTTP.post(f"{url}/register", json=metadata)
    assert response.status_code == 201, response.text
    return response.json()


def device_start(url: str, scope: str = "read") -> dict:
    response = HTTP.post(
        f"{url}/device_authorization", data={"client_id": CLIENT_ID, "scope": scope}
    )
    assert response.status_code == 200, response.text
    return response.json()


def device_approve(browser: Browser, user_code: str) -> httpx.Response:
    fields = browser.form_fields(browser.http.get("/device", params={"user_code": user_code}))
    consent = browser.http.post("/device", data=fields)
    fields = browser.form_fields(consent)
    fields["decision"] = "approve"
    return browser.http.post("/device", data=fields)


def device_poll(url: str, device_code: str) -> httpx.Response:
    return HTTP.post(
        f"{url}/token",
        data={"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": CLIENT_ID},
    )


@contextmanager
def database(provider: Provider) -> Iterator[sqlalchemy.Connection]:
    """A transaction on the provider's own database (SQLite file or PostgreSQL)."""
    engine = sqlalchemy.create_engine(provider.database_url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def clone(browser: Browser) -> Browser:
    """The same user agent (cookies) without keep-alive, for requests that may get a 5xx
    (uvicorn then closes the connection, which would break the next request of `browser`)."""
    twin = Browser.__new__(Browser)
    twin.issuer = browser.issuer
    twin.http = httpx.Client(
        base_url=browser.issuer,
        timeout=30,
        cookies=browser.http.cookies,
        limits=httpx.Limits(max_keepalive_connections=0),
    )
    return twin


def is_postgres(provider: Provider) -> bool:
    return provider.database_url.startswith("postgresql")


def assert_error_page_without_redirect(response: httpx.Response) -> None:
    """The error is shown to the person (a 400 HTML page), not sent anywhere."""
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")


def assert_no_redirect_off_site(response: httpx.Response, origin: str) -> None:
    location = response.headers.get("location")
    if location is not None:
        target = urlsplit(urljoin(origin + "/", location))
        assert (target.scheme, target.netloc) == tuple(urlsplit(origin)[:2]), location


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    name = f"oauth_sec_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alice_twin(alice) -> Browser:
    return clone(alice)


@pytest.fixture(scope="module")
def stranger(provider) -> Browser:
    """A user agent nobody signed in with, without keep-alive."""
    return clone(Browser(provider.url))


@pytest.fixture(scope="module")
def web_client(provider) -> dict:
    """A dynamically registered confidential web client with one https redirect URI."""
    return register(provider.url, client_name="web app", redirect_uris=["https://app.example/cb"])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def own_provider(request, tmp_path_factory) -> Iterator[Provider]:
    """A provider with a database of its own, for tests that change the throttling state."""
    tmp = tmp_path_factory.mktemp("own-provider")
    if request.param == "sqlite":
        handle = start_provider(tmp)
        yield handle
        handle.process.stop()
        return
    request.getfixturevalue("postgres_database")  # checks PostgreSQL is up
    with fresh_postgres_database() as url:
        handle = start_provider(tmp, url)
        yield handle
        handle.process.stop()


@pytest.fixture(scope="module")
def sqlite_provider(tmp_path_factory) -> Iterator[Provider]:
    """One SQLite provider for page tests that do not depend on the database: they sign in
    (argon2, a fraction of a second each) and need not run twice."""
    handle = start_provider(tmp_path_factory.mktemp("pages"))
    yield handle
    handle.process.stop()


def forget_login_failures(provider: Provider) -> None:
    with database(provider) as conn:
        conn.execute(delete(login_failures))


@pytest.fixture
def throttle_reset(own_provider) -> Provider:
    forget_login_failures(own_provider)
    return own_provider


# ==============================================================================================
# RFC 9700 §4.1: redirect URIs are compared exactly
# ==============================================================================================


LOOPBACK_LOOKALIKES = [
    "http://127.0.0.1:8976/Callback",  # case of the path
    "http://127.0.0.1:8976/%63allback",  # percent-encoded path
    "http://127.0.0.1:8976/callback%2F",
    "http://127.0.0.1:8976/callback/.",
    "http://127.0.0.1:8976/x/../callback",
    "http://127.0.0.1:8976//callback",
    "http://127.0.0.1:8976/callback#fragment",
    "http://127.0.0.1:8976/callback%00",
    "http://LOCALHOST:8976/callback",  # case of the host
    "http://127.0.0.1.evil.example:8976/callback",
    "http://localhost.evil.example:8976/callback",
    "http://127.0.0.2:8976/callback",  # another loopback address than the registered one
    "http://127.1:8976/callback",
    "http://2130706433:8976/callback",
    "http://0.0.0.0:8976/callback",
    "http://[0:0:0:0:0:0:0:1]:8976/callback",  # IPv6 loopback spelled differently
    "http://[::ffff:127.0.0.1]:8976/callback",
    "http://127.0.0.1:+8976/callback",  # ports Python or browsers read differently
    "http://127.0.0.1:99999/callback",
    "http://127.0.0.1: 8976/callback",
    "http://127.0.0.1:8976#@evil.example/callback",
    "http://127.0.0.1:8976?@evil.example/callback",
]

HTTPS_LOOKALIKES = [
    "https://app.example:443/cb",  # the default port written out
    "https://app.example:8443/cb",  # a port on a non-loopback host
    "https://APP.example/cb",
    "https://app.example/CB",
    "https://app.example/cb/",
    "https://app.example//cb",
    "https://app.example/cb?x=1",
    "https://app.example/cb?",
    "https://app.example/cb#x",
    "https://app.example/%63b",
    "https://app.example/cb/../cb",
    "https://app.example./cb",
    "https://app.example.evil.example/cb",
    "https://evil.example/cb",
    "https://app.example@evil.example/cb",
    "https://evil.example@app.example/cb",
    "http://app.example/cb",
    "HTTPS://app.example/cb",
]


def refused_redirect_uris(browser: Browser, client_id: str, uris: list[str]) -> list[str]:
    """The URIs from `uris` that were NOT refused with the error page (and no redirect)."""
    accepted = []
    for uri in uris:
        params, _ = auth_params(client_id=client_id, redirect_uri=uri)
        response = browser.authorize(decision=None, **params)
        if (
            response.status_code != 400
            or "location" in response.headers
            or "text/html" not in response.headers["content-type"]
        ):
            accepted.append(f"{uri} -> {response.status_code}")
    return accepted


def test_loopback_redirect_uri_lookalikes_are_refused(provider, alice_twin):
    """Only the port may differ from a registered loopback URI (RFC 8252 §7.3); case,
    encoding, dot segments, other loopback spellings and userinfo tricks are refused."""
    assert refused_redirect_uris(alice_twin, CLIENT_ID, LOOPBACK_LOOKALIKES) == []


@pytest.mark.parametrize(
    "redirect_uri", ["http://[::1]:8976/callback", "http://localhost:1/callback"]
)
def test_registered_loopback_hosts_with_any_port_are_accepted(provider, alice, redirect_uri):
    """The control for the test above: RFC 8252 §7.3 loopback redirects, any port."""
    code, verifier, _ = code_for(alice, redirect_uri=redirect_uri)
    assert redeem(provider.url, code, verifier, redirect_uri=redirect_uri).status_code == 200


def test_https_redirect_uri_must_match_exactly(provider, alice_twin, web_client):
    """Exact string comparison for non-loopback URIs (RFC 9700 §4.1.3): no port, case,
    encoding, path, query, fragment or userinfo variation."""
    assert refused_redirect_uris(alice_twin, web_client["client_id"], HTTPS_LOOKALIKES) == []


def test_https_redirect_uri_exact_match_is_accepted(provider, alice, web_client):
    params, _ = auth_params(
        client_id=web_client["client_id"], redirect_uri="https://app.example/cb"
    )
    query = redirect_query(alice.authorize(**params))
    assert "code" in query and query["iss"] == provider.url


def test_consent_form_cannot_swap_the_redirect_uri(provider, alice):
    """The consent POST is validated again: a tampered redirect_uri gets the error page."""
    params, _ = auth_params()
    fields = alice.form_fields(alice.http.get("/authorize", params=params))
    fields.update(redirect_uri="https://evil.example/cb", decision="approve")
    response = alice.http.post("/authorize", data=fields)
    assert response.status_code == 400 and "location" not in response.headers


# ==============================================================================================
# PKCE (RFC 7636, RFC 9700 §2.1.1): no code without an S256 challenge, none without its verifier
# ==============================================================================================


def test_consent_form_without_challenge_issues_no_code(provider, alice):
    """Removing code_challenge from the consent form does not get a code issued without one."""
    params, _ = auth_params()
    fields = alice.form_fields(alice.http.get("/authorize", params=params))
    fields = {k: v for k, v in fields.items() if not k.startswith("code_challenge")}
    fields["decision"] = "approve"
    query = redirect_query(alice.http.post("/authorize", data=fields))
    assert query["error"] == "invalid_request" and "code" not in query


@pytest.mark.parametrize("challenge", ["", "abc", "=" * 43, "a" * 129])
def test_malformed_code_challenge_is_refused(provider, alice, challenge):
    params, _ = auth_params(code_challenge=challenge)
    query = redirect_query(alice.authorize(decision=None, **params))
    assert query["error"] == "invalid_request" and "code" not in query


def test_plain_verifier_equal_to_the_challenge_fails(provider, alice):
    """A downgrade to `plain` at the token endpoint: sending the challenge as the verifier."""
    code, _, params = code_for(alice)
    response = redeem(provider.url, code, params["code_challenge"], code_challenge_method="plain")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("verifier", ["short", "x" * 129, "é" * 50, "a b" * 20])
def test_malformed_verifier_is_refused(provider, alice, verifier):
    code, _, _ = code_for(alice)
    response = redeem(provider.url, code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_request", "invalid_grant")


# ==============================================================================================
# Authorization codes: short-lived, single use, bound to client, redirect_uri and resource
# ==============================================================================================


def test_code_lives_at_most_five_minutes(provider, alice):
    code, _, _ = code_for(alice)
    with database(provider) as conn:
        expires_at = conn.execute(
            select(authorization_codes.c.expires_at).where(
                authorization_codes.c.code_hash == secret_hash(code)
            )
        ).scalar_one()
    assert 0 < expires_at - time.time() <= 300 + 2


def test_expired_code_is_refused(provider, alice):
    code, verifier, _ = code_for(alice)
    with database(provider) as conn:
        conn.execute(
            update(authorization_codes)
            .where(authorization_codes.c.code_hash == secret_hash(code))
            .values(expires_at=int(time.time()) - 1)
        )
    response = redeem(provider.url, code, verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_codes_and_tokens_are_stored_only_as_hashes(provider, alice):
    code, verifier, _ = code_for(alice)
    issued = redeem(provider.url, code, verifier).json()
    with database(provider) as conn:
        dump = "\n".join(
            repr(row)
            for table in (authorization_codes, tokens)
            for row in conn.execute(select(table)).all()
        )
    for secret in (code, issued["access_token"], issued["refresh_token"]):
        assert secret not in dump
        assert secret_hash(secret) in dump


def test_code_redeemed_without_redirect_uri_fails(provider, alice):
    code, verifier, _ = code_for(alice)
    response = HTTP.post(
        f"{provider.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": CLIENT_ID,
            "code_verifier": verifier,
        },
    )
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_grant", "invalid_request")


def test_code_without_resource_cannot_gain_one_at_the_token_endpoint(provider, alice):
    code, verifier, _ = code_for(alice)
    response = redeem(provider.url, code, verifier, resource=provider.resource)
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"


def test_code_for_one_resource_is_not_redeemed_for_two(provider, alice):
    code, verifier, _ = code_for(alice, resource=provider.resource)
    response = HTTP.post(
        f"{provider.url}/token",
        content=(
            f"grant_type=authorization_code&code={code}&client_id={CLIENT_ID}"
            f"&redirect_uri={REDIRECT_URI}&code_verifier={verifier}"
            f"&resource={provider.resource}&resource={OTHER_RESOURCE}"
        ),
        headers=FORM,
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"


def test_code_is_bound_to_the_client_even_when_it_authenticates(provider, alice, web_client):
    code, verifier, _ = code_for(alice)
    response = HTTP.post(
        f"{provider.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=(web_client["client_id"], web_client["client_secret"]),
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


# ==============================================================================================
# Refresh tokens: bound to the client, never wider in scope or resource, expire, die with family
# ==============================================================================================


def test_refresh_token_is_bound_to_its_client(provider, alice):
    issued = tokens_for(provider.url, alice)
    other = register(
        provider.url,
        redirect_uris=["http://127.0.0.1/callback"],
        token_endpoint_auth_method="none",
        grant_types=["authorization_code", "refresh_token"],
    )
    response = refresh(provider.url, issued["refresh_token"], client_id=other["client_id"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_access_token_is_not_a_refresh_token(provider, alice):
    issued = tokens_for(provider.url, alice)
    response = refresh(provider.url, issued["access_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("scope", ["admin", "read admin", "read write"])
def test_refresh_cannot_add_a_scope_never_granted(provider, alice, scope):
    issued = tokens_for(provider.url, alice, scope="read")
    response = refresh(provider.url, issued["refresh_token"], scope=scope)
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


def test_refresh_cannot_add_a_resource(provider, alice):
    issued = tokens_for(provider.url, alice)
    response = refresh(provider.url, issued["refresh_token"], resource=provider.resource)
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"


def test_refresh_cannot_switch_resource_and_keeps_the_audience(provider, alice):
    issued = tokens_for(provider.url, alice, resource=provider.resource)
    switched = refresh(provider.url, issued["refresh_token"], resource=OTHER_RESOURCE)
    assert switched.status_code == 400 and switched.json()["error"] == "invalid_target"
    kept = refresh(provider.url, issued["refresh_token"])
    assert kept.status_code == 200, kept.text
    assert introspect(provider.url, kept.json()["access_token"])["aud"] == provider.resource


def test_expired_refresh_token_is_refused(provider, alice):
    issued = tokens_for(provider.url, alice)
    with database(provider) as conn:
        conn.execute(
            update(tokens)
            .where(tokens.c.token_hash == secret_hash(issued["refresh_token"]))
            .values(expires_at=int(time.time()) - 1)
        )
    response = refresh(provider.url, issued["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert introspect(provider.url, issued["refresh_token"]) == {"active": False}


def test_revoked_refresh_token_cannot_be_used(provider, alice):
    issued = tokens_for(provider.url, alice)
    revoked = HTTP.post(
        f"{provider.url}/revoke", data={"token": issued["refresh_token"], "client_id": CLIENT_ID}
    )
    assert revoked.status_code == 200
    response = refresh(provider.url, issued["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


# ==============================================================================================
# No implicit flow, no hybrid flow, no password grant (RFC 9700 §2.1.2, §2.4)
# ==============================================================================================


@pytest.mark.parametrize(
    "response_type", ["token", "id_token", "code token", "code id_token", "token id_token", "none"]
)
def test_no_implicit_or_hybrid_response_type(provider, alice, response_type):
    params, _ = auth_params(response_type=response_type)
    response = alice.authorize(decision=None, **params)
    location = response.headers.get("location", "")
    assert "access_token" not in location and "#" not in location
    assert redirect_query(response)["error"] == "unsupported_response_type"


@pytest.mark.parametrize(
    "grant_type",
    [
        "password",
        "implicit",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "urn:ietf:params:oauth:grant-type:saml2-bearer",
    ],
)
def test_no_password_or_assertion_grants_even_for_confidential_clients(provider, grant_type):
    response = HTTP.post(
        f"{provider.url}/token",
        data={"grant_type": grant_type, "username": "alice", "password": "password123"},
        auth=RS_AUTH,
    )
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"


# ==============================================================================================
# Introspection and revocation need client authentication
# ==============================================================================================


def test_introspection_with_a_wrong_secret_is_401(provider, alice):
    token = tokens_for(provider.url, alice)["access_token"]
    response = HTTP.post(
        f"{provider.url}/introspect", data={"token": token}, auth=("mcp-resource-server", "x")
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert "active" not in response.json()


def test_revocation_with_a_wrong_secret_is_401(provider):
    issued = HTTP.post(
        f"{provider.url}/token", data={"grant_type": "client_credentials"}, auth=RS_AUTH
    ).json()
    response = HTTP.post(
        f"{provider.url}/revoke",
        data={"token": issued["access_token"]},
        auth=("mcp-resource-server", "wrong"),
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert introspect(provider.url, issued["access_token"])["active"] is True


def test_another_client_cannot_revoke_a_token(provider, alice, web_client):
    issued = tokens_for(provider.url, alice)
    for auth, data in [
        ((web_client["client_id"], web_client["client_secret"]), {}),
        (None, {"client_id": "no-such-client"}),
    ]:
        response = HTTP.post(
            f"{provider.url}/revoke", data={"token": issued["refresh_token"], **data}, auth=auth
        )
        assert response.status_code in (400, 401)
    assert introspect(provider.url, issued["access_token"])["active"] is True
    assert introspect(provider.url, issued["refresh_token"])["active"] is True


# ==============================================================================================
# No open redirect (RFC 9700 §4.11); `iss` on every authorization response (RFC 9207)
# ==============================================================================================


NEXT_TARGETS = [
    "https://evil.example/",
    "//evil.example/",
    "/\\evil.example/",
    "\\\\evil.example/",
    "http:evil.example",
    " //evil.example",
    "/%2F%2Fevil.example",
    "javascript:alert(1)",
    "/device/../..//evil.example",
    "/authorize?x=1\r\nLocation: https://evil.example/",
    "/device\r\nLocation: https://evil.example/",
]


def test_login_next_is_sanitized_to_a_provider_page(sqlite_provider):
    """Every sign-in page carries the sanitized target in its hidden `next` field (shown
    here by a form refused for its CSRF token, which costs no password check)."""
    browser = Browser(sqlite_provider.url)
    leaving = {}
    for target in NEXT_TARGETS:
        page = browser.http.post("/login", data={"next": target, "username": "bob"})
        kept = browser.form_fields(page)["next"]
        target_url = urlsplit(urljoin(sqlite_provider.url + "/", kept))
        if target_url.netloc != urlsplit(sqlite_provider.url).netloc:
            leaving[target] = kept
    assert leaving == {}


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/", "/\\evil.example/", "/device\r\nSet-Cookie: x=1"],
)
def test_login_next_never_redirects_off_site(sqlite_provider, target):
    browser = Browser(sqlite_provider.url)
    fields = login_form(browser)
    fields.update(username="bob", password="secret456", next=target)
    response = browser.http.post("/login", data=fields)
    assert "x=1" not in response.headers.get("set-cookie", "")
    if "\n" in target:  # control characters: the form itself is refused
        assert response.status_code == 400 and "location" not in response.headers
        return
    assert response.status_code == 303
    assert_no_redirect_off_site(response, sqlite_provider.url)


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": "no-such-client", "redirect_uri": "https://evil.example/"},
        {"redirect_uri": "https://evil.example/"},
        {"client_id": CLIENT_ID},
        {"client_id": CLIENT_ID, "redirect_uri": "https://evil.example/", "response_type": "token"},
        {"client_id": CLIENT_ID, "redirect_uri": "https://evil.example/", "scope": "nope"},
        {"client_id": CLIENT_ID, "redirect_uri": "https://evil.example/", "code_challenge": None},
        {"client_id": CLIENT_ID, "redirect_uri": "//evil.example/callback"},
    ],
)
def test_authorize_errors_with_unverified_redirect_uri_never_redirect(provider, alice, params):
    request, _ = auth_params(**{"redirect_uri": None, "client_id": None, **params})
    for browser in (alice, Browser(provider.url)):  # signed in and not
        response = browser.authorize(decision=None, **request)
        assert response.status_code == 400 and "location" not in response.headers


def test_no_silent_error_redirect_to_a_freshly_registered_web_client(provider):
    """RFC 9700 §4.11.2: anyone may register a client, so an error for a client the operator
    did not register is shown here, not sent to its redirect URI, when nobody is signed in."""
    attacker = register(provider.url, redirect_uris=["https://evil.example/landing"])
    params, _ = auth_params(
        client_id=attacker["client_id"], redirect_uri="https://evil.example/landing", scope="x"
    )
    response = Browser(provider.url).authorize(decision=None, **params)  # nobody signed in
    assert_error_page_without_redirect(response)


def test_no_silent_error_redirect_to_a_freshly_registered_web_client_when_signed_in(
    provider, alice_twin
):
    attacker = register(provider.url, redirect_uris=["https://evil.example/landing"])
    params, _ = auth_params(
        client_id=attacker["client_id"], redirect_uri="https://evil.example/landing", scope="x"
    )
    response = alice_twin.authorize(decision=None, **params)
    assert_error_page_without_redirect(response)


def _one_iss(response: httpx.Response) -> dict:
    assert response.status_code in (302, 303), response.text
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query.get("iss") is not None and len(query["iss"]) == 1, query
    return {k: v[0] for k, v in query.items()}


@pytest.mark.parametrize(
    "case, overrides, decision, expected",
    [
        ("approve", {}, "approve", None),
        ("deny", {}, "deny", "access_denied"),
        ("no challenge", {"code_challenge": None}, None, "invalid_request"),
        ("unknown scope", {"scope": "launch"}, None, "invalid_scope"),
        ("implicit", {"response_type": "token"}, None, "unsupported_response_type"),
        ("unknown resource", {"resource": "https://elsewhere.example/"}, None, "invalid_target"),
    ],
)
def test_every_authorization_response_carries_iss_once(
    provider, alice, case, overrides, decision, expected
):
    params, _ = auth_params(**overrides)
    query = _one_iss(alice.authorize(decision=decision, **params))
    assert query["iss"] == provider.url and query["state"] == "xyz-state"
    assert query.get("error") == expected
    assert ("code" in query) == (expected is None)


# ==============================================================================================
# Token responses are never cached (RFC 6749 §5.1)
# ==============================================================================================


def _token_answers(provider: Provider, alice: Browser) -> list[tuple[str, httpx.Response]]:
    issued = tokens_for(provider.url, alice)
    post = lambda data, **kw: HTTP.post(f"{provider.url}/token", data=data, **kw)  # noqa: E731
    return [
        ("refresh", refresh(provider.url, issued["refresh_token"])),
        ("refresh replay", refresh(provider.url, issued["refresh_token"])),
        ("client_credentials", post({"grant_type": "client_credentials"}, auth=RS_AUTH)),
        ("bad client", post({"grant_type": "client_credentials"}, auth=("x", "y"))),
        ("device pending", device_poll(provider.url, device_start(provider.url)["device_code"])),
        ("unknown grant", post({"grant_type": "password"})),
        ("no grant", post({})),
    ]


def test_every_token_endpoint_answer_is_no_store(provider, alice):
    for name, response in _token_answers(provider, alice):
        assert response.headers.get("cache-control") == "no-store", name
        assert response.headers.get("pragma") == "no-cache", name


def test_registration_and_introspection_answers_are_no_store(provider, alice):
    token = tokens_for(provider.url, alice)["access_token"]
    answers = [
        HTTP.post(f"{provider.url}/register", json={"redirect_uris": ["https://a.example/cb"]}),
        HTTP.post(f"{provider.url}/introspect", data={"token": token}, auth=RS_AUTH),
        HTTP.post(f"{provider.url}/device_authorization", data={"client_id": CLIENT_ID}),
    ]
    for response in answers:
        assert response.status_code in (200, 201)
        assert response.headers.get("cache-control") == "no-store", response.url


# ==============================================================================================
# Sign-in: throttling, uniform failures, CSRF, headers, cookies, logs
# ==============================================================================================


def login_form(browser: Browser) -> dict:
    return browser.form_fields(browser.http.get("/device"))


def try_login(browser: Browser, username: str, password: str, address: str) -> httpx.Response:
    fields = login_form(browser)
    fields.update(username=username, password=password)
    return browser.http.post("/login", data=fields, headers={"x-forwarded-for": address})


def wait_seconds(response: httpx.Response) -> int:
    match = re.search(r"Try again in (\d+) seconds", response.text)
    assert match, response.text
    return int(match.group(1))


FIRST_WAIT_FLOOR = 1.0
"""The first wait is 2 s counted from a whole-second timestamp: it lasts at least 1 s after the
fifth failure was recorded."""


def attempt_right_after_five_failures(
    reset: Callable[[], None],
    fail: Callable[[int], None],
    attempt: Callable[[], httpx.Response],
    tries: int = 5,
) -> httpx.Response:
    """The answer to `attempt`, made right after five recorded failures (`fail(n)` makes the
    n-th, n = 0…4). The fifth failure is recorded (reserved) after its request is sent and
    before its password is checked, and the attempt is decided after its own request is sent
    and before its answer comes back: an answer that came back within FIRST_WAIT_FLOOR of
    sending the fifth failure was decided during the wait, so it must be a refusal; one that
    took longer (a loaded machine) may rightly have passed the wait and tells nothing, so the
    whole sequence is repeated from a clean slate."""
    for _ in range(tries):
        reset()
        for n in range(4):
            fail(n)
        fifth_sent = time.monotonic()  # no later than the fifth failure's record
        fail(4)
        answer = attempt()
        if answer.status_code == 429 or time.monotonic() - fifth_sent < FIRST_WAIT_FLOOR:
            return answer
    pytest.fail(f"the machine was too slow to reach the first wait in {tries} tries")


def test_account_is_throttled_after_five_failures_even_for_the_right_password(throttle_reset):
    url = throttle_reset.url
    browser = Browser(url)

    def fail(_: int) -> None:  # five addresses: only the account key accumulates
        assert try_login(browser, "bob", "wrong", fake_address()).status_code == 401

    throttled = attempt_right_after_five_failures(
        lambda: forget_login_failures(throttle_reset),
        fail,
        lambda: try_login(browser, "bob", "secret456", fake_address()),
    )
    assert throttled.status_code == 429
    wait = wait_seconds(throttled)
    assert 1 <= wait <= 300
    assert 'name="password"' in browser.http.get("/device").text  # still signed out
    time.sleep(wait + 0.2)
    assert try_login(browser, "bob", "secret456", fake_address()).status_code == 303


def test_client_address_is_throttled_across_accounts(throttle_reset):
    url = throttle_reset.url
    browser = Browser(url)
    attacker = fake_address()

    def fail(n: int) -> None:  # five accounts: only the address key accumulates
        assert try_login(browser, f"nobody{n}", "wrong", attacker).status_code == 401

    from_attacker = attempt_right_after_five_failures(
        lambda: forget_login_failures(throttle_reset),
        fail,
        lambda: try_login(browser, "alice", "password123", attacker),
    )
    assert from_attacker.status_code == 429 and wait_seconds(from_attacker) >= 1
    assert try_login(Browser(url), "alice", "password123", fake_address()).status_code == 303


def test_throttling_state_survives_a_restart(throttle_reset):
    """Failures are counted in the database, not in the process: twelve recorded failures
    (a 256 s backoff) still refuse the right password after a restart."""
    with database(throttle_reset) as conn:
        conn.execute(
            sqlalchemy.insert(login_failures).values(
                key="user:admin", failures=12, last_failure_at=int(time.time())
            )
        )
    throttle_reset.restart()
    response = try_login(Browser(throttle_reset.url), "admin", "admin789", fake_address())
    assert response.status_code == 429 and wait_seconds(response) > 200


FIFTEEN_MINUTES = 900  # SECURITY.md: failures are forgotten after 15 min


def record_failures(provider: Provider, key: str, failures: int, seconds_ago: int) -> None:
    """Sign-in failures as the provider stores them, the last one `seconds_ago`: time passes
    in the database, not in the test."""
    with database(provider) as conn:
        conn.execute(
            sqlalchemy.insert(login_failures).values(
                key=key, failures=failures, last_failure_at=int(time.time()) - seconds_ago
            )
        )


def test_old_login_failures_are_forgotten_after_fifteen_minutes(throttle_reset):
    """Forty failures whose last one is a little over 15 minutes old count as none: a wrong
    password then starts counting afresh, and the right one passes at once."""
    address = fake_address()
    record_failures(throttle_reset, f"addr:{address}", 40, FIFTEEN_MINUTES + 5)
    browser = Browser(throttle_reset.url)
    assert try_login(browser, "nobody", "wrong", address).status_code == 401
    assert try_login(browser, "alice", "password123", address).status_code == 303


def test_login_failures_within_fifteen_minutes_still_count(throttle_reset):
    """Forty failures, the last ten minutes ago: their wait is over, but they are not
    forgotten, so one more failure means the longest wait again, even for the right password."""
    address = fake_address()
    record_failures(throttle_reset, f"addr:{address}", 40, FIFTEEN_MINUTES - 300)
    browser = Browser(throttle_reset.url)
    assert try_login(browser, "nobody", "wrong", address).status_code == 401
    throttled = try_login(browser, "alice", "password123", address)
    assert throttled.status_code == 429 and wait_seconds(throttled) > 200


def test_the_wait_after_many_failures_is_at_most_five_minutes(throttle_reset):
    """However many failures an account has, the wait after the last one is capped at 300 s
    (SECURITY.md: a brake, not a lock), and the right password is refused during it."""
    record_failures(throttle_reset, "user:admin", 60, 0)
    response = try_login(Browser(throttle_reset.url), "admin", "admin789", fake_address())
    assert response.status_code == 429
    assert 200 < wait_seconds(response) <= 300


SAME_TIME_BAND = (0.5, 2.0)  # ratio of the median password-check times
SAME_TIME_RUNS = 3


def test_unknown_user_and_wrong_password_look_and_take_the_same(sqlite_provider):
    """Same status, same page, and a similar time (argon2 runs for unknown users too): the
    ratio of the medians is a property, not a speed limit. Only the POST (the password check)
    is timed, in interleaved pairs. Load on a shared machine can push one run out of the band;
    a systematic difference (no argon2 for unknown users: a ratio in the hundreds) shows in
    every run, so the band must be met by at least one of SAME_TIME_RUNS runs."""
    browser = Browser(sqlite_provider.url)
    try_login(browser, "warm-up", "x", fake_address())
    pages, runs = set(), []

    def timed_failure(username: str) -> float:
        fields = login_form(browser)
        fields.update(username=username, password="not-the-password")
        started = time.perf_counter()
        response = browser.http.post(
            "/login", data=fields, headers={"x-forwarded-for": fake_address()}
        )
        elapsed = time.perf_counter() - started
        assert response.status_code == 401
        pages.add(re.sub(r'value="[^"]*"', "", response.text))
        return elapsed

    try:
        for _ in range(SAME_TIME_RUNS):
            forget_login_failures(sqlite_provider)  # 3 failures per account: never throttled
            wrong, unknown = [], []
            for n, account in enumerate(("alice", "bob", "admin") * 3):
                stranger = f"nobody-{uuid.uuid4().hex[:6]}"
                if n % 2:  # alternate which of the pair goes first
                    unknown.append(timed_failure(stranger))
                    wrong.append(timed_failure(account))
                else:
                    wrong.append(timed_failure(account))
                    unknown.append(timed_failure(stranger))
            runs.append((statistics.median(wrong) / statistics.median(unknown), wrong, unknown))
            if SAME_TIME_BAND[0] <= runs[-1][0] <= SAME_TIME_BAND[1]:
                break
    finally:
        forget_login_failures(sqlite_provider)
    assert len(pages) == 1  # identical apart from the echoed username and CSRF token
    assert SAME_TIME_BAND[0] <= runs[-1][0] <= SAME_TIME_BAND[1], runs


def test_csrf_token_of_another_session_is_refused_everywhere(provider, alice):
    mallory = Browser(provider.url)
    foreign = login_form(mallory)["csrf_token"]
    victim = Browser(provider.url)
    login_form(victim)  # the victim has a session with a token of its own
    fields = {"csrf_token": foreign, "username": "bob", "password": "secret456", "next": "/device"}
    login = victim.http.post("/login", data=fields)
    assert login.status_code == 400 and "location" not in login.headers
    params, _ = auth_params()
    alice.http.get("/authorize", params=params)
    consent = alice.http.post(
        "/authorize", data={**params, "csrf_token": foreign, "decision": "approve"}
    )
    assert consent.status_code == 400 and "location" not in consent.headers
    user_code = device_start(provider.url)["user_code"]
    for data in ({"user_code": user_code}, {"user_code": user_code, "csrf_token": foreign}):
        device = alice.http.post("/device", data={**data, "decision": "approve"})
        assert device.status_code == 400 and "Device connected" not in device.text


def test_sign_in_starts_a_new_csrf_token(sqlite_provider):
    browser = Browser(sqlite_provider.url)
    before = login_form(browser)["csrf_token"]
    browser.sign_in("bob", "secret456")
    after = browser.form_fields(browser.http.get("/device"))["csrf_token"]
    assert before != after


def _html_pages(provider: Provider, alice: Browser) -> dict[str, httpx.Response]:
    params, _ = auth_params()
    anonymous = Browser(provider.url)
    return {
        "login": anonymous.http.get("/authorize", params=params),
        "login failed": try_login(anonymous, "nobody", "x", fake_address()),
        "consent": alice.http.get("/authorize", params=params),
        "device": alice.http.get("/device"),
        "error": anonymous.http.get("/authorize", params={"client_id": "nope"}),
        "not found": anonymous.http.get("/nowhere", headers={"accept": "text/html"}),
        "signed out": anonymous.http.post("/logout", data={}),
    }


def test_every_html_page_forbids_framing_sniffing_referrers_and_caching(provider, alice):
    for name, page in _html_pages(provider, alice).items():
        assert page.headers["content-type"].startswith("text/html"), name
        csp = page.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, name
        assert page.headers.get("x-frame-options") == "DENY", name
        assert page.headers.get("x-content-type-options") == "nosniff", name
        assert page.headers.get("referrer-policy") == "no-referrer", name
        assert page.headers.get("cache-control") == "no-store", name
        assert "<script" not in page.text.lower(), name


def test_json_answers_are_nosniff(provider):
    for response in (
        HTTP.get(f"{provider.url}/.well-known/oauth-authorization-server"),
        HTTP.post(f"{provider.url}/token", data={}),
        HTTP.get(f"{provider.url}/nowhere"),
    ):
        assert response.headers.get("x-content-type-options") == "nosniff"


def test_pages_escape_what_the_user_sent(sqlite_provider):
    provider = sqlite_provider
    browser = Browser(provider.url)
    probe = '"><script>alert(1)</script>'
    response = try_login(browser, probe, "x", fake_address())
    assert probe not in response.text and "&lt;script&gt;" in response.text
    evil_name = register(
        provider.url,
        client_name=probe,
        redirect_uris=["http://127.0.0.1/callback"],
        token_endpoint_auth_method="none",
    )
    params, _ = auth_params(client_id=evil_name["client_id"])
    page = browser.http.get("/authorize", params=params)
    assert page.status_code == 200 and probe not in page.text


def test_session_cookie_is_httponly_samesite_and_path_wide(sqlite_provider):
    browser = Browser(sqlite_provider.url)
    fields = login_form(browser)
    fields.update(username="bob", password="secret456")
    signed_in = browser.http.post("/login", data=fields)
    cookie = signed_in.headers["set-cookie"].lower()
    assert cookie.startswith("oauth_session=")
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain-http issuer: a Secure cookie would never come back


def test_session_cookie_is_secure_when_the_issuer_is_https(tmp_path):
    handle = start_provider(tmp_path, args=["--issuer", "https://auth.example"])
    try:
        page = HTTP.get(f"{handle.url}/device")
        cookie = page.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie
        metadata = HTTP.get(f"{handle.url}/.well-known/oauth-authorization-server").json()
        assert metadata["issuer"] == "https://auth.example"
    finally:
        handle.process.stop()


def signed_in_on(browser: Browser) -> bool:
    """Whether the provider sees this browser as signed in: /device asks for a password
    only when it does not."""
    return 'name="password"' not in browser.http.get("/device").text


def test_logout_without_csrf_keeps_the_session_and_with_it_ends_it(sqlite_provider):
    """A page elsewhere cannot sign the user out (no CSRF token: refused, still signed in);
    the provider's own form, which carries the token, does sign out."""
    browser = Browser(sqlite_provider.url, "bob", "secret456")
    assert signed_in_on(browser)
    for forged in ({}, {"csrf_token": "not-the-token"}):
        refused = browser.http.post("/logout", data=forged)
        assert refused.status_code == 400 and "signed out" not in refused.text.lower()
        assert signed_in_on(browser)
    token = browser.form_fields(browser.http.get("/device"))["csrf_token"]
    done = browser.http.post("/logout", data={"csrf_token": token})
    assert done.status_code == 200 and "signed out" in done.text.lower()
    assert not signed_in_on(browser)


# -- logs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged_flow(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A debug-level provider that went through every flow; (its log, the secrets used)."""
    handle = start_provider(tmp_path_factory.mktemp("logs"), args=["--log-level", "debug"])
    url = handle.url
    try:
        secrets: dict[str, str] = {"RS secret": RS_SECRET, "password": "password123"}
        wrong = Browser(url)
        try_login(wrong, "alice", "a-wrong-password-xyz", fake_address())
        secrets["wrong password"] = "a-wrong-password-xyz"
        alice = Browser(url, "alice", "password123")
        secrets["session cookie"] = alice.http.cookies["oauth_session"]
        code, verifier, _ = code_for(alice)
        issued = redeem(url, code, verifier).json()
        rotated = refresh(url, issued["refresh_token"]).json()
        secrets.update(code=code, verifier=verifier, access=issued["access_token"])
        secrets.update(refresh=issued["refresh_token"], rotated=rotated["refresh_token"])
        web = register(url, redirect_uris=["http://127.0.0.1/cb"], client_name="conf")
        secrets["client secret"] = web["client_secret"]
        params, web_verifier = auth_params(
            client_id=web["client_id"], redirect_uri="http://127.0.0.1:5000/cb"
        )
        web_code = redirect_query(alice.authorize(**params))["code"]
        web_tokens = HTTP.post(
            f"{url}/token",
            data={
                "grant_type": "authorization_code",
                "code": web_code,
                "redirect_uri": "http://127.0.0.1:5000/cb",
                "code_verifier": web_verifier,
            },
            auth=(web["client_id"], web["client_secret"]),
        ).json()
        secrets.update(web_code=web_code, web_access=web_tokens["access_token"])
        machine = HTTP.post(
            f"{url}/token", data={"grant_type": "client_credentials"}, auth=RS_AUTH
        ).json()
        secrets["client_credentials token"] = machine["access_token"]
        introspect(url, rotated["access_token"])
        HTTP.post(f"{url}/revoke", data={"token": rotated["refresh_token"], "client_id": CLIENT_ID})
        device = device_start(url)
        device_approve(alice, device["user_code"])
        device_tokens = device_poll(url, device["device_code"]).json()
        secrets.update(
            device_code=device["device_code"], device_access=device_tokens["access_token"]
        )
        HTTP.post(  # an unexpected error on the way, with secrets in the request
            f"{url}/token",
            data={"grant_type": "client_credentials", "client_secret": RS_SECRET},
            headers={"authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()},
        )
    finally:
        handle.process.stop()
    return handle.process.output(), secrets


def test_no_secret_appears_in_the_log(logged_flow):
    log, secrets = logged_flow
    assert "DEBUG" in log  # the strictest level was on
    leaked = [name for name, value in secrets.items() if value in log]
    assert not leaked, leaked


def test_no_secret_hash_appears_in_the_log(logged_flow):
    log, secrets = logged_flow
    hashes = {name: hashlib.sha256(value.encode()).hexdigest() for name, value in secrets.items()}
    leaked = [name for name, value in hashes.items() if value in log]
    assert not leaked, leaked


# ==============================================================================================
# Bad input at every endpoint: the RFC's error and a 4xx, never a 5xx or a traceback
# ==============================================================================================

OAUTH_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "unsupported_token_type",
    "invalid_client_metadata",
    "invalid_redirect_uri",
    "invalid_target",
    "invalid_token",
    "not_found",
}

# (method, path, a plausible form for it, answers as "json" or "html")
ENDPOINTS = [
    ("POST", "/token", "grant_type=authorization_code&code=x&client_id=mcp-client", "json"),
    ("POST", "/introspect", "token=x", "json"),
    ("POST", "/revoke", "token=x&client_id=mcp-client", "json"),
    ("POST", "/device_authorization", "client_id=mcp-client&scope=read", "json"),
    ("POST", "/admin/revoke-user", "username=bob", "json"),
    ("GET", "/admin/grants", "", "json"),
    ("GET", "/authorize", "response_type=code&client_id=mcp-client", "html"),
    ("POST", "/authorize", "response_type=code&client_id=mcp-client&decision=approve", "html"),
    ("POST", "/login", "username=alice&password=x&next=/device", "html"),
    ("POST", "/device", "user_code=ABCD-EFGH&decision=approve", "html"),
    ("GET", "/device", "user_code=ABCD", "html"),
    ("POST", "/logout", "csrf_token=x", "html"),
    ("POST", "/userinfo", "access_token=x", "json"),
    ("GET", "/userinfo", "access_token=x", "json"),
    ("POST", "/api/profile", "access_token=x", "json"),
    ("GET", "/api/profile", "access_token=x", "json"),
]
ENDPOINT_IDS = [f"{method} {path}" for method, path, _, _ in ENDPOINTS]

# name -> (body or query bytes, extra headers); a body of None means "the plausible form"
BAD_FORMS: dict[str, tuple[bytes | None, dict]] = {
    "empty": (b"", FORM),
    "no content-type": (None, {}),
    "text/plain": (None, {"content-type": "text/plain"}),
    "json instead of form": (
        b'{"grant_type": "client_credentials"}',
        {"content-type": "application/json"},
    ),
    "multipart": (
        b'--b\r\nContent-Disposition: form-data; name="token"; filename="t"\r\n\r\nx\r\n--b--\r\n',
        {"content-type": "multipart/form-data; boundary=b"},
    ),
    "multipart without boundary": (b"token=x", {"content-type": "multipart/form-data"}),
    "invalid utf-8": (b"client_id=\xff\xfe&token=\xc3\x28&username=\x80", FORM),
    "percent-encoded invalid utf-8": (b"client_id=%ff%fe&token=%c3%28&username=%80", FORM),
    "invalid percent-encoding": (b"client_id=%zz&token=%&username=%%%&=&&=x", FORM),
    "duplicated keys": (
        b"client_id=mcp-client&client_id=other&token=a&token=b&username=a&username=b",
        FORM,
    ),
    "control characters": (b"client_id=mcp%0Aclient&token=%1b%5b31m&username=%0d%0a", FORM),
    "long values": (
        b"client_id=" + b"c" * 20000 + b"&token=" + b"t" * 20000 + b"&username=" + b"u" * 20000,
        FORM,
    ),
    "many keys": (b"&".join(b"k%d=v" % i for i in range(3000)), FORM),
    "unicode": ("client_id=ünï€ødé&token=🔑&username=ålice&user_code=ＡＢＣＤ".encode(), FORM),
    "charset latin-1": (
        "username=\xe9".encode("latin-1"),
        {"content-type": "application/x-www-form-urlencoded; charset=latin-1"},
    ),
}

B64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
BAD_AUTHORIZATION = {
    "not base64": "Basic !!!not-base64!!!",
    "no colon": "Basic " + B64(b"mcp-resource-server"),
    "empty credentials": "Basic " + B64(b":"),
    "empty secret": "Basic " + B64(b"mcp-resource-server:"),
    "no credentials": "Basic",
    "bearer instead of basic": "Bearer abc",
    "unknown scheme": "Digest username=x",
    "long": "Basic " + B64(b"a" * 3000 + b":" + b"b" * 3000),
}


QUERY_CASES = [
    "invalid utf-8",
    "percent-encoded invalid utf-8",
    "invalid percent-encoding",
    "duplicated keys",
    "control characters",
    "unicode",
    "long values",
]


def _answer_problem(response: httpx.Response, kind: str, *, allow_ok: bool) -> str | None:
    """What is wrong with an answer to bad input, or None: a 4xx (a 2xx where the endpoint
    just shows a page), never a 5xx or a traceback, and an RFC error code in JSON errors."""
    text = response.text
    if response.status_code >= 500 or "Traceback" in text or 'File "' in text:
        return f"{response.status_code} {text[:200]}"
    if not allow_ok and not 400 <= response.status_code < 500:
        return f"{response.status_code} (a 4xx expected) {text[:200]}"
    content_type = response.headers.get("content-type", "")
    if response.status_code >= 400 and content_type.startswith("application/json"):
        if response.json().get("error") not in OAUTH_ERRORS:
            return f"not an RFC error code: {text[:200]}"
    elif (
        response.status_code >= 400 and kind == "html" and not content_type.startswith("text/html")
    ):
        return f"{response.status_code} {content_type}, not a page: {text[:200]}"
    return None


@pytest.mark.parametrize("method, path, plausible, kind", ENDPOINTS, ids=ENDPOINT_IDS)
def test_malformed_parameters_get_an_error_not_a_crash(
    alice_twin, stranger, method, path, plausible, kind
):
    """Each BAD_FORMS case (query-string cases for GET) at one endpoint."""
    browser = alice_twin if path in ("/authorize", "/device") else stranger
    problems = {}
    for case, (body, headers) in BAD_FORMS.items():
        body = plausible.encode() if body is None else body
        headers = {**headers, "x-forwarded-for": fake_address()}
        if method == "GET":
            if case not in QUERY_CASES:
                continue
            response = browser.http.get(f"{path}?{body.decode('latin-1')[:8000]}", headers=headers)
        else:
            response = browser.http.request(method, path, content=body, headers=headers)
        problem = _answer_problem(response, kind, allow_ok=path in ("/device", "/logout"))
        if problem:
            problems[case] = problem
    assert problems == {}


CLIENT_AUTH_ENDPOINTS = [
    ("POST", "/token"),
    ("POST", "/introspect"),
    ("POST", "/revoke"),
    ("POST", "/device_authorization"),
    ("GET", "/admin/grants"),
    ("POST", "/admin/revoke-user"),
]


@pytest.mark.parametrize("method, path", CLIENT_AUTH_ENDPOINTS)
def test_malformed_basic_authentication_is_invalid_client(provider, method, path):
    data = {"grant_type": "client_credentials", "token": "x", "username": "bob", "scope": "read"}
    problems = {}
    for name, header in BAD_AUTHORIZATION.items():
        response = HTTP.request(
            method,
            f"{provider.url}{path}",
            data=data if method == "POST" else None,
            headers={"authorization": header},
        )
        problem = _answer_problem(response, "json", allow_ok=False)
        if not problem and response.json()["error"] not in ("invalid_client", "invalid_request"):
            problem = response.text
        if problem:
            problems[name] = problem
    assert problems == {}


def test_basic_credentials_are_form_urlencoded_as_rfc6749_says(provider):
    """RFC 6749 §2.3.1: client_id and secret are form-urlencoded inside the Basic header."""
    encoded = B64(b"mcp%2Dresource%2Dserver:" + RS_SECRET.encode())
    response = HTTP.post(
        f"{provider.url}/token",
        data={"grant_type": "client_credentials"},
        headers={"authorization": f"Basic {encoded}"},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "method, path",
    [("POST", "/token"), ("POST", "/introspect"), ("POST", "/revoke"), ("GET", "/admin/grants")],
)
def test_basic_credentials_that_are_not_utf8_are_invalid_client(provider, method, path):
    response = HTTP.request(
        method,
        f"{provider.url}{path}",
        data={"grant_type": "client_credentials", "token": "x"} if method == "POST" else None,
        headers={"authorization": "Basic " + B64(b"\xff\xfe:\xfd")},
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def _echoing_requests(url: str, odd: str) -> dict[str, httpx.Response]:
    """Requests whose error_description quotes a value the client sent."""
    authorize = lambda **kw: HTTP.get(f"{url}/authorize", params=auth_params(**kw)[0])  # noqa: E731
    return {
        "redirect_uri at /authorize": authorize(redirect_uri=f"{REDIRECT_URI}{odd}"),
        "resource at /authorize": authorize(resource=f"https://x.example/{odd}"),
        "duplicated key at /token": HTTP.post(
            f"{url}/token", content=f"k{odd}=1&k{odd}=2".encode(), headers=FORM
        ),
        "scope at /device_authorization": HTTP.post(
            f"{url}/device_authorization", data={"client_id": CLIENT_ID, "scope": f"read x{odd}"}
        ),
        "resource at /device_authorization": HTTP.post(
            f"{url}/device_authorization", data={"client_id": CLIENT_ID, "resource": f"x{odd}"}
        ),
        "resource at /token": HTTP.post(
            f"{url}/token",
            data={"grant_type": "client_credentials", "resource": f"x{odd}"},
            auth=RS_AUTH,
        ),
        "redirect_uri at /register": HTTP.post(
            f"{url}/register", json={"redirect_uris": [f"https://a.example/{odd}"]}
        ),
    }


@pytest.mark.parametrize(
    "odd", ['"', "\\", "ü", "\x7f"], ids=["quote", "backslash", "umlaut", "DEL"]
)
def test_odd_characters_echoed_in_errors_get_a_4xx_or_an_error_redirect(provider, odd):
    """Each answer is the request's error: a 4xx, or (an authorization request whose redirect
    URI was verified) a redirect carrying `error`; never a 5xx, never a success."""
    wrong = {}
    for name, response in _echoing_requests(provider.url, odd).items():
        if response.status_code in (302, 303):
            if "error" not in redirect_query(response):
                wrong[name] = response.headers["location"]
        elif not 400 <= response.status_code < 500:
            wrong[name] = response.status_code
    assert not wrong, wrong


NUL_CASES = {
    "POST /token": (
        "POST",
        "/token",
        {"grant_type": "authorization_code", "code": "x", "client_id": "a\x00b"},
    ),
    "POST /introspect": (
        "POST",
        "/introspect",
        {"token": "x", "client_id": "a\x00b", "client_secret": "s"},
    ),
    "POST /revoke": ("POST", "/revoke", {"token": "x", "client_id": "a\x00b"}),
    "POST /device_authorization": ("POST", "/device_authorization", {"client_id": "a\x00b"}),
    "GET /authorize": ("GET", "/authorize", {"response_type": "code", "client_id": "a\x00b"}),
    "POST /login": ("POST", "/login", {"username": "a\x00b", "password": "x"}),
    "POST /device": ("POST", "/device", {"user_code": "AB\x00CD"}),
    "Basic client id": ("POST", "/token", {"grant_type": "client_credentials"}),
}


@pytest.mark.parametrize("case", list(NUL_CASES))
def test_nul_bytes_in_parameters_are_refused_not_500(request, provider, alice_twin, case):
    """PostgreSQL refuses NUL in text, so a NUL that reaches a query is a 500 there."""
    method, path, data = NUL_CASES[case]
    headers = {"x-forwarded-for": fake_address()}
    if case == "Basic client id":
        headers["authorization"] = "Basic " + B64(b"a\x00b:secret")
    browser = alice_twin
    if method == "POST" and path in ("/login", "/device"):
        data = {**data, "csrf_token": login_form(alice_twin)["csrf_token"]}
    if path == "/login":
        browser = clone(Browser(provider.url))
        data["csrf_token"] = login_form(browser)["csrf_token"]
    if method == "GET":
        response = browser.http.get(path, params=data, headers=headers)
    else:
        response = browser.http.post(path, data=data, headers=headers)
    assert 400 <= response.status_code < 500, response.text[:200]


@pytest.mark.parametrize(
    "document",
    [
        "{",
        "[]",
        "null",
        '"text"',
        "1e999",
        '{"redirect_uris": "https://a.example/cb"}',
        '{"redirect_uris": ["http://evil.example/cb"]}',
        '{"redirect_uris": ["https://a.example/cb"], "grant_types": ["password"]}',
        '{"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}',
        '{"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}',
        '{"redirect_uris": ["https://a.example/cb"], "grant_types": [1]}',
        '{"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": 1}',
        '{"redirect_uris": ["https://a.example/cb"], "scope": "read root"}',
        '{"redirect_uris": ["https://a.example/cb"], "logo_uri": "javascript:alert(1)"}',
        '{"redirect_uris": ["https://a.example/cb"], "contacts": "x"}',
    ],
)
def test_registration_refuses_bad_metadata_with_rfc7591_errors(provider, document):
    response = HTTP.post(
        f"{provider.url}/register", content=document, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] in (
        "invalid_request",
        "invalid_client_metadata",
        "invalid_redirect_uri",
    )


@pytest.mark.parametrize(
    "document",
    [
        '{"redirect_uris": [1]}',
        '{"redirect_uris": [null]}',
        '{"redirect_uris": ["https://a.example/cb"], "scope": 5}',
        '{"redirect_uris": ["https://a.example/cb"], "scope": ["read"]}',
        '{"redirect_uris": ["https://a.example/cb"], "response_types": [1]}',
        '{"redirect_uris": ["https://a.example/cb"], "jwks": "x"}',
        '{"redirect_uris": ["https://a.example/cb"], "client_uri": 5}',
        '{"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": ["none"]}',
        "[" * 20000 + "]" * 20000,
    ],
    ids=[
        "uri int",
        "uri null",
        "scope int",
        "scope list",
        "response_types int",
        "jwks str",
        "client_uri int",
        "auth method list",
        "deep nesting",
    ],
)
def test_registration_refuses_metadata_of_the_wrong_type(provider, document):
    response = HTTP.post(
        f"{provider.url}/register", content=document, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid_request", "invalid_client_metadata")


@pytest.mark.parametrize(
    "uri", ["https://a.example/c b", "https://a.example/cb\r\nX: y", "https://a.example/\x00"]
)
def test_registration_refuses_redirect_uris_that_are_not_uris(provider, uri):
    response = HTTP.post(f"{provider.url}/register", json={"redirect_uris": [uri]})
    assert response.status_code == 400


def test_registration_cannot_choose_its_id_or_privileges(provider):
    answer = register(
        provider.url,
        redirect_uris=["https://a.example/cb"],
        client_id="mcp-resource-server",
        client_secret="chosen",
        resource_server=True,
        may_exchange_tokens=True,
    )
    assert answer["client_id"] != "mcp-resource-server" and answer["client_secret"] != "chosen"
    assert introspect(provider.url, "x") == {"active": False}  # the real RS still authenticates
    admin = HTTP.get(
        f"{provider.url}/admin/grants", auth=(answer["client_id"], answer["client_secret"])
    )
    assert admin.status_code == 403


# -- sizes ------------------------------------------------------------------------------------

LIMIT = 64 * 1024


@pytest.mark.parametrize(
    "method, path", [(m, p) for m, p, _, _ in ENDPOINTS if m == "POST"] + [("POST", "/register")]
)
def test_body_over_64_kib_is_413(provider, method, path):
    response = HTTP.post(f"{provider.url}{path}", content=b"a=" + b"x" * LIMIT, headers=FORM)
    assert response.status_code == 413 and response.json()["error"] == "invalid_request"


def test_body_just_under_the_limit_is_read(provider):
    body = b"grant_type=client_credentials&pad=" + b"x" * (LIMIT - 40)
    response = HTTP.post(f"{provider.url}/token", content=body, headers=FORM, auth=RS_AUTH)
    assert response.status_code == 200, response.text


def test_chunked_body_over_the_limit_is_413(provider):
    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    response = HTTP.post(f"{provider.url}/token", content=chunks(), headers=FORM)
    assert response.status_code == 413


def _raw_request(url: str, request: bytes) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /authorize?" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n"
        b"Connection: close\r\n\r\nab=cd",
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\nConnection: close\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n"
        b"Connection: close\r\n\r\ngrant_type=client_credentials",
        b"POST /token HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"h" * 70000
        + b"\r\nConnection: close\r\n\r\n",
    ],
    ids=["70 KB query", "two content-lengths", "negative length", "empty basic", "70 KB header"],
)
def test_malformed_http_gets_a_4xx(provider, request_bytes):
    answer = _raw_request(provider.url, request_bytes)
    assert answer.startswith(b"HTTP/1.1 "), answer[:300]  # an HTTP answer, not a bare close
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]
    assert b"Traceback" not in answer


@pytest.mark.parametrize(
    "path",
    [
        "/static/../oauth_provider.py",
        "/static/..%2foauth_provider.py",
        "/static/%2e%2e/users.yaml",
        "/static/..%5c..%5cusers.yaml",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
    ],
)
def test_static_files_do_not_leave_their_directory(provider, path):
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    answer = _raw_request(provider.url, request)
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 404), answer[:200]
    assert b"password_hash" not in answer and b"root:" not in answer and b"import" not in answer


# ==============================================================================================
# Faults: a restart loses nothing (run last: it restarts the module's provider)
# ==============================================================================================


def test_restart_keeps_clients_codes_device_codes_sessions_and_refresh_tokens(provider, alice):
    client = register(
        provider.url,
        redirect_uris=["http://127.0.0.1/callback"],
        token_endpoint_auth_method="none",
        grant_types=["authorization_code", "refresh_token"],
    )
    code, verifier, _ = code_for(alice, client_id=client["client_id"])
    device = device_start(provider.url)
    issued = tokens_for(provider.url, alice)
    provider.restart()
    redeemed = HTTP.post(
        f"{provider.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": client["client_id"],
            "code_verifier": verifier,
        },
    )
    assert redeemed.status_code == 200, redeemed.text  # client and code survived
    assert "Device connected" in device_approve(alice, device["user_code"]).text  # session too
    polled = device_poll(provider.url, device["device_code"])
    assert polled.status_code == 200, polled.text
    rotated = refresh(provider.url, issued["refresh_token"])
    assert rotated.status_code == 200, rotated.text  # the refresh token survived
    successor = refresh(provider.url, rotated.json()["refresh_token"])
    assert successor.status_code == 200, successor.text
    replay = refresh(provider.url, issued["refresh_token"])  # spent, its successor used
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
