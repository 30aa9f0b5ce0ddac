"""OpenID Connect RP-Initiated Logout 1.0 at /end_session (end_session.py): a relying party
signs the person out of the provider, with an ID token as the hint, and has them sent back
only to a post-logout redirect URI it registered. Attacks: an open redirect through
post_logout_redirect_uri, a hint issued to another client, and logout CSRF (a link that
signs someone out without their confirmation)."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy
from authlib.oauth2.rfc6749.errors import OAuth2Error
from joserfc import jwt
from joserfc.jwk import RSAKey

from mcp_oauth.provider.client_checks import document_metadata
from mcp_oauth.provider.users_file import UsersFileError, load_users_file
from tests.oauth_helpers import REDIRECT_URI, Browser, auth_params, redeem, redirect_query

SIGNED_OUT_URI = "http://127.0.0.1:8976/signed-out"


def register(provider, logout_uris=(SIGNED_OUT_URI,)) -> str:
    response = httpx.post(
        f"{provider.url}/register",
        json={
            "redirect_uris": [REDIRECT_URI],
            "post_logout_redirect_uris": list(logout_uris),
            "token_endpoint_auth_method": "none",
            "scope": "openid",
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["client_id"]


@pytest.fixture(scope="module")
def rp(provider) -> str:
    return register(provider)


@pytest.fixture(scope="module")
def other_rp(provider) -> str:
    return register(provider, ["http://127.0.0.1:8976/other-signed-out"])


def id_token(provider, browser: Browser, client_id: str) -> str:
    params, verifier = auth_params(client_id=client_id, scope="openid", nonce=f"n-{time.time_ns()}")
    query = redirect_query(browser.authorize(**params))
    response = redeem(provider.url, query["code"], verifier, client_id=client_id)
    return response.json()["id_token"]


def is_signed_in(browser: Browser, client_id: str) -> bool:
    """A new authorization request shows the consent page (signed in), not the sign-in form."""
    params, _ = auth_params(client_id=client_id, scope="openid", nonce=f"n-{time.time_ns()}")
    page = browser.http.get("/authorize", params=params)
    assert page.status_code == 200, page.text
    return 'name="password"' not in page.text


def signing_key(provider) -> RSAKey:
    """The provider's own key, from its database: only to forge hints it would have signed."""
    engine = sqlalchemy.create_engine(provider.database_url)
    with engine.connect() as conn:
        value = conn.execute(
            sqlalchemy.text("SELECT value FROM server_secrets WHERE name = 'jwt_signing_key'")
        ).scalar_one()
    engine.dispose()
    return RSAKey.import_key(json.loads(value))


def forged(provider, claims: dict, typ: str | None = None) -> str:
    key = signing_key(provider)
    header = {"alg": "RS256", "kid": key.kid, **({"typ": typ} if typ else {})}
    return jwt.encode(header, claims, key)


def signed_as_is(provider, header: dict, claims: dict) -> str:
    """A JWS signed with the provider's key over exactly this header (joserfc would refuse
    to write some of them)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{part(header)}.{part(claims)}"
    signature = signing_key(provider).private_key.sign(
        signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def fresh(provider) -> Browser:
    return Browser(provider.url, "alice", "password123")


def test_discovery_names_the_end_session_endpoint(provider):
    metadata = httpx.get(f"{provider.url}/.well-known/openid-configuration").json()
    assert metadata["end_session_endpoint"] == f"{provider.url}/end_session"


def test_a_valid_hint_signs_out_and_goes_back_with_the_state(provider, rp):
    browser = fresh(provider)
    hint = id_token(provider, browser, rp)
    response = browser.http.get(
        "/end_session",
        params={"id_token_hint": hint, "post_logout_redirect_uri": SIGNED_OUT_URI, "state": "s1"},
    )
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert location._replace(query="").geturl() == SIGNED_OUT_URI
    assert parse_qs(location.query) == {"state": ["s1"]}
    assert not is_signed_in(browser, rp)


def test_an_expired_hint_is_still_accepted(provider, rp):
    """RP-Initiated Logout §2: the OP should accept an ID token whose exp has passed."""
    browser = fresh(provider)
    now = int(time.time())
    hint = forged(
        provider,
        {"iss": provider.url, "sub": "alice", "aud": [rp], "iat": now - 7200, "exp": now - 3600},
    )
    response = browser.http.get(
        "/end_session", params={"id_token_hint": hint, "post_logout_redirect_uri": SIGNED_OUT_URI}
    )
    assert response.status_code == 302 and response.headers["location"] == SIGNED_OUT_URI
    assert not is_signed_in(browser, rp)


def test_an_unregistered_post_logout_redirect_uri_is_never_redirected_to(provider, rp):
    """Open redirect: a valid hint, but a URI the client never registered (or one that only
    starts like a registered one): a 400 page, no redirect, still signed in."""
    browser = fresh(provider)
    hint = id_token(provider, browser, rp)
    for uri in ("https://attacker.example/", SIGNED_OUT_URI + "/../evil", SIGNED_OUT_URI + "?x"):
        response = browser.http.get(
            "/end_session", params={"id_token_hint": hint, "post_logout_redirect_uri": uri}
        )
        assert response.status_code == 400, response.text
        assert "location" not in response.headers
        assert "not one this application registered" in response.text
    assert is_signed_in(browser, rp)


def test_another_clients_post_logout_redirect_uri_is_refused(provider, rp, other_rp):
    browser = fresh(provider)
    response = browser.http.get(
        "/end_session",
        params={
            "client_id": rp,
            "post_logout_redirect_uri": "http://127.0.0.1:8976/other-signed-out",
        },
    )
    assert response.status_code == 400 and "location" not in response.headers
    assert is_signed_in(browser, rp)


def test_a_hint_issued_to_another_client_is_refused(provider, rp, other_rp):
    """client_id names the relying party, the hint was issued to another one (§2)."""
    browser = fresh(provider)
    hint = id_token(provider, browser, other_rp)
    response = browser.http.get(
        "/end_session",
        params={"client_id": rp, "id_token_hint": hint, "post_logout_redirect_uri": SIGNED_OUT_URI},
    )
    assert response.status_code == 400 and "location" not in response.headers
    assert is_signed_in(browser, rp)


@pytest.mark.parametrize(
    "hint_kind",
    [
        "another issuer",
        "an access token",
        "a security event token",
        "another type",
        "no subject",
        "not a JWT",
        "another key",
    ],
)
def test_a_hint_that_is_not_our_id_token_is_refused(provider, rp, hint_kind):
    """The key that signs ID tokens also signs access tokens and Security Event Tokens: only
    a JWT typed and shaped as an ID token (no typ or "JWT"; sub and aud) is a hint."""
    browser = fresh(provider)
    now = int(time.time())
    claims = {"iss": provider.url, "sub": "alice", "aud": [rp], "iat": now, "exp": now + 60}
    if hint_kind == "another issuer":
        hint = forged(provider, {**claims, "iss": "https://other.example"})
    elif hint_kind == "an access token":  # RFC 9068: same key, typ at+jwt
        hint = forged(provider, {**claims, "client_id": rp, "aud": rp}, typ="at+jwt")
    elif hint_kind == "a security event token":  # RFC 8417 as event_stream.py signs them
        event = {"https://schemas.openid.net/secevent/ssf/event-type/verification": {}}
        set_claims = {"iss": provider.url, "aud": rp, "iat": now, "jti": "j1", "events": event}
        hint = forged(provider, set_claims, typ="secevent+jwt")
    elif hint_kind == "another type":  # a future token of this key, even with every claim
        hint = forged(provider, claims, typ="logout+jwt")
    elif hint_kind == "no subject":
        hint = forged(provider, {key: value for key, value in claims.items() if key != "sub"})
    elif hint_kind == "not a JWT":
        hint = "not-a-token"
    else:
        hint = jwt.encode({"alg": "RS256"}, claims, RSAKey.generate_key(2048))
    response = browser.http.get(
        "/end_session", params={"id_token_hint": hint, "post_logout_redirect_uri": SIGNED_OUT_URI}
    )
    assert response.status_code == 400 and "location" not in response.headers
    assert is_signed_in(browser, rp)


@pytest.mark.parametrize("typ", [None, "JWT", "jwt"])
def test_a_hint_typed_as_an_id_token_signs_out(provider, rp, typ):
    """RFC 7519 §5.1: an ID token's typ is absent or "JWT", in any case."""
    browser = fresh(provider)
    now = int(time.time())
    claims = {"iss": provider.url, "sub": "alice", "aud": [rp], "iat": now, "exp": now + 60}
    response = browser.http.get(
        "/end_session",
        params={"id_token_hint": forged(provider, claims, typ=typ),
                "post_logout_redirect_uri": SIGNED_OUT_URI},
    )  # fmt: skip
    assert response.status_code == 302, response.text
    assert response.headers["location"] == SIGNED_OUT_URI
    assert not is_signed_in(browser, rp)


def test_a_hint_whose_error_authlib_will_not_echo_is_a_400_page(provider, rp):
    """A critical header named with a quote: the JOSE error names it, and Authlib refuses
    that text in an error description (RFC 6749 §5.2); still a 400 page, not a 500."""
    browser = fresh(provider)
    hint = signed_as_is(provider, {"alg": "RS256", "crit": ['x"y']}, {"iss": provider.url})
    response = browser.http.get("/end_session", params={"id_token_hint": hint})
    assert response.status_code == 400 and "not allowed" in response.text
    assert is_signed_in(browser, rp)


def test_without_a_hint_the_person_confirms_before_being_signed_out(provider, rp):
    """Logout CSRF: a bare link (or an auto-submitted form without our CSRF token) signs no
    one out; the confirmation page does, and then the person stays on this provider (no
    hint: §3 allows no redirect)."""
    browser = fresh(provider)
    link = {"client_id": rp, "post_logout_redirect_uri": SIGNED_OUT_URI, "state": "s2"}
    page = browser.http.get("/end_session", params=link)
    assert page.status_code == 200 and "Sign out?" in page.text
    assert "location" not in page.headers
    assert is_signed_in(browser, rp)
    forged_form = browser.http.post(
        "/end_session", data={**link, "decision": "sign_out", "csrf_token": "guessed"}
    )
    assert forged_form.status_code == 400
    assert is_signed_in(browser, rp)
    cross_site = browser.http.post("/end_session", data={**link, "decision": "sign_out"})
    assert cross_site.status_code == 200 and "Sign out?" in cross_site.text
    assert is_signed_in(browser, rp)
    fields = browser.form_fields(browser.http.get("/end_session", params=link))
    stay = browser.http.post("/end_session", data={**fields, "decision": "stay"})
    assert "still signed in" in stay.text and is_signed_in(browser, rp)
    fields = browser.form_fields(browser.http.get("/end_session", params=link))
    done = browser.http.post("/end_session", data={**fields, "decision": "sign_out"})
    assert done.status_code == 200 and "You are signed out." in done.text
    assert not is_signed_in(browser, rp)


def test_a_hint_about_someone_else_asks_before_signing_out(provider, rp, bob):
    """The hint is bob's (a valid ID token of ours), the browser is alice's: she confirms;
    once she does, she is sent back to the registered URI."""
    browser = fresh(provider)
    hint = id_token(provider, bob, rp)
    link = {"id_token_hint": hint, "post_logout_redirect_uri": SIGNED_OUT_URI}
    page = browser.http.get("/end_session", params=link)
    assert page.status_code == 200 and "Sign out?" in page.text
    assert "http://127.0.0.1:8976" in page.headers["content-security-policy"]
    assert is_signed_in(browser, rp)
    fields = browser.form_fields(browser.http.get("/end_session", params=link))
    done = browser.http.post("/end_session", data={**fields, "decision": "sign_out"})
    assert done.status_code == 303 and done.headers["location"] == SIGNED_OUT_URI
    assert not is_signed_in(browser, rp)


def test_registration_holds_post_logout_redirect_uris_to_redirect_uri_rules(provider):
    for uris, error in (
        (["http://attacker.example/bye"], "invalid_redirect_uri"),
        (["https://rp.example/bye#frag"], "invalid_redirect_uri"),
        ("https://rp.example/bye", "invalid_client_metadata"),
        ([7], "invalid_client_metadata"),
    ):
        response = httpx.post(
            f"{provider.url}/register",
            json={"redirect_uris": [REDIRECT_URI], "post_logout_redirect_uris": uris},
        )
        assert response.status_code == 400, (uris, response.text)
        assert response.json()["error"] == error, (uris, response.text)


USERS_YAML = """
users:
  alice: {password_hash: "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$aGFzaA", scopes: [read]}
clients:
  - client_id: web-app
    redirect_uris: [https://app.example/callback]
    post_logout_redirect_uris: [%s]
"""


def test_users_yaml_post_logout_redirect_uris_are_checked_at_start(tmp_path):
    path = tmp_path / "users.yaml"
    path.write_text(USERS_YAML % "https://app.example/signed-out")
    (client,) = load_users_file(path).clients
    assert client.post_logout_redirect_uris == ["https://app.example/signed-out"]
    path.write_text(USERS_YAML % "http://app.example/signed-out")
    with pytest.raises(UsersFileError, match="web-app: post_logout_redirect_uris"):
        load_users_file(path)


def test_a_metadata_documents_post_logout_redirect_uris_follow_the_same_rules():
    """A client identified by its metadata document (CIMD) registers them there, checked
    alike."""
    url = "https://app.example/client.json"
    document = {
        "client_id": url,
        "redirect_uris": ["https://app.example/callback"],
        "post_logout_redirect_uris": ["https://app.example/signed-out"],
    }
    metadata = document_metadata(url, document, ["openid"], [])
    assert metadata["post_logout_redirect_uris"] == ["https://app.example/signed-out"]
    with pytest.raises(OAuth2Error, match="post_logout_redirect_uris"):
        document_metadata(
            url, {**document, "post_logout_redirect_uris": ["http://app.example/"]}, [], []
        )
