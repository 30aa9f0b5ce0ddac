"""Attacks through the pages a person sees and the names clients choose (issue 11), over real
HTTP: device-code phishing, look-alike client names, registration metadata of odd types,
loopback redirect URIs spelled differently, caches keeping private answers, and forms that
post elsewhere. The form-action policy is checked in a real Chromium.

Each test is written as the attack; SECURITY.md maps the promises to them."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.oauth_helpers import CLIENT_ID, REDIRECT_URI, Browser, auth_params
from tests.support import CHROMIUM, headless_chromium
from tests.test_security import (
    HTTP,
    RS_AUTH,
    clone,
    device_start,
    fake_address,
    refused_redirect_uris,
    tokens_for,
)

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MARKER = re.compile(r"<p[^>]*>[^<]*registered itself[^<]*</p>")
OPERATOR_CLIENT_NAME = "MCP learner client (client.py)"  # users.yaml's mcp-client


def register(provider, **metadata) -> httpx.Response:
    """POST /register, from an address of its own (registrations are limited per address)."""
    body = {"redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "none", **metadata}
    return HTTP.post(
        f"{provider.url}/register", json=body, headers={"x-forwarded-for": fake_address()}
    )


def registered(provider, **metadata) -> dict:
    response = register(provider, **metadata)
    assert response.status_code == 201, response.text
    return response.json()


# -- device-code phishing (RFC 8628 §5.4) and the client's description --------------------------


def test_device_consent_shows_the_user_code_and_warns_against_remote_phishing(provider, alice):
    """Someone sends the victim a user code for a device the attacker holds: the consent page
    shows the code to compare with the device's, and says to go on only for a device in
    your hands."""
    user_code = device_start(provider.url)["user_code"]
    entry = alice.http.get("/device", params={"user_code": user_code})
    consent = alice.http.post("/device", data=alice.form_fields(entry))
    assert consent.status_code == 200 and "Allow access?" in consent.text
    shown = re.search(r'class="user-code">([^<]+)<', consent.text)
    assert shown and shown.group(1) == user_code
    assert "device that is in your hands" in consent.text
    assert "someone sent you this code" in consent.text


def test_authorize_consent_shows_no_user_code(provider, alice):
    page = alice.authorize(decision=None, **auth_params()[0])
    assert "Allow access?" in page.text and "user-code" not in page.text


def test_sign_in_page_marks_a_self_registered_client_as_the_consent_page_does(provider):
    """The sign-in page is the first a phishing client's name appears on: it carries the same
    "registered itself" marker as the consent page, and none for the operator's client."""
    client_id = registered(provider, client_name="Friendly Notes")["client_id"]
    anonymous = Browser(provider.url)
    sign_in = anonymous.http.get("/authorize", params=auth_params(client_id=client_id)[0])
    assert 'name="password"' in sign_in.text and "Friendly Notes" in sign_in.text
    assert MARKER.search(sign_in.text)
    own = anonymous.http.get("/authorize", params=auth_params()[0])
    assert OPERATOR_CLIENT_NAME in own.text and not MARKER.search(own.text)


# -- client names (RFC 7591 §5) ---------------------------------------------------------------

HIDING_OR_MIXING_NAMES = {
    "right-to-left override": "Notes \u202egnp.exe",
    "left-to-right isolate": "Notes \u2066app\u2069",
    "zero-width space": "Pay\u200bPal",
    "zero-width joiner": "Pay\u200dPal",
    "soft hyphen": "Pay\u00adPal",
    "bell": "Notes\x07",
    "newline": "Notes\nApproved by your administrator",
    "line separator": "Notes\u2028Approved",
    "private use": "Notes \ue000",
    "Cyrillic a among Latin": "P\u0430yPal",
    "Greek omicron among Latin": "G\u03bfogle Drive",
    "Cyrillic with Greek": "\u0430\u03b1",
}


@pytest.mark.parametrize("name", HIDING_OR_MIXING_NAMES.values(), ids=HIDING_OR_MIXING_NAMES)
def test_client_names_that_hide_characters_or_mix_scripts_are_refused(provider, name):
    response = register(provider, client_name=name)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client_metadata"


@pytest.mark.parametrize("name", ["Notes", "Café Notizen", "メモ帳 Notes", "Заметки", "Σημειώσεις"])
def test_client_names_in_one_script_are_accepted(provider, name):
    """The control for the test above: names in any one script (or Latin with CJK) pass."""
    assert registered(provider, client_name=name)["client_name"] == name


@pytest.mark.parametrize(
    "name",
    [
        OPERATOR_CLIENT_NAME,
        "mcp learner CLIENT (client.py)",
        "MCP learner client",
        "MCP-learner-client client.py",
        "ＭＣＰ learner client (client.py)",  # fullwidth letters, NFKC-equal
        "MCP resource server",
        "mcp-client",
    ],
)
def test_client_names_imitating_an_operator_client_are_refused(provider, name):
    response = register(provider, client_name=name)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client_metadata"


def test_client_names_are_stored_normalised(provider):
    client = registered(provider, client_name="  ＮＯＴＥＳ   for\u00a0 me ")
    assert client["client_name"] == "NOTES for me"


def test_a_client_named_after_a_generic_word_is_accepted(provider):
    """The control for the imitation test: a short common word inside an operator's name
    is not an imitation of it."""
    assert registered(provider, client_name="Client")["client_name"] == "Client"


# -- registration metadata of the wrong JSON type: 400, never 500 --------------------------------

SHAPES = [1, 0, 1.5, True, False, None, 10**30, "x", {}, {"a": 1}, [], ["x"], [1], [None], [[]]]
STRING_FIELDS = ["client_name", "client_uri", "logo_uri", "scope", "tos_uri", "policy_uri"]
STRING_FIELDS += ["jwks_uri", "software_id", "software_version", "token_endpoint_auth_method"]
LIST_FIELDS = ["redirect_uris", "grant_types", "response_types", "contacts"]


def of_type(value, field: str) -> bool:
    """Whether `value` has the JSON type RFC 7591 §2 gives `field`."""
    if field in STRING_FIELDS:
        return isinstance(value, str)
    if field in LIST_FIELDS:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, dict)


@pytest.mark.parametrize("field", STRING_FIELDS + LIST_FIELDS + ["jwks"])
def test_registration_metadata_of_any_wrong_type_is_invalid_client_metadata(provider, field):
    """A number, boolean, null, object or array where RFC 7591 §2 has another type: a 400
    invalid_client_metadata for each (a numeric client_name was a 500)."""
    answers = {
        repr(value): register(provider, **{field: value})
        for value in SHAPES
        if not of_type(value, field)
    }
    statuses = {value: answer.status_code for value, answer in answers.items()}
    assert set(statuses.values()) == {400}, statuses
    assert {answer.json()["error"] for answer in answers.values()} == {"invalid_client_metadata"}


# -- loopback redirect URIs: only the port may vary (RFC 8252 §7.3) -----------------------------

LOOPBACK_SPELLINGS = [
    "HTTP://127.0.0.1:8976/callback",  # scheme case
    "Http://127.0.0.1:8976/callback",
    "http://127.0.0.1:0/callback",  # port 0
    "http://127.0.0.1:08976/callback",  # a leading zero
    "http://127.0.0.1:65536/callback",  # beyond the port range
    " http://127.0.0.1:8976/callback",  # leading space
    "http://127.0.0.1:8976/callback?",  # empty query
    "http://127.0.0.1:8976/callback#",  # empty fragment
    "http://127.0.0.1:8976/callback?#",
    "http://127.0.0.1:8976:/callback",
    "http://127.0.0.1:8976/callback ",
]


@pytest.mark.parametrize("uri", LOOPBACK_SPELLINGS)
def test_loopback_redirect_uri_spelled_differently_beyond_the_port_is_refused(provider, alice, uri):
    assert refused_redirect_uris(clone(alice), CLIENT_ID, [uri]) == []


# -- answers no cache may keep -----------------------------------------------------------------


def test_userinfo_and_admin_answers_are_no_store(provider, alice):
    """UserInfo (OIDC), the profile API (On-Behalf-Of downstream) and the admin API."""
    userinfo_url = f"{provider.url}/userinfo"
    profile_url = f"{provider.url}/api/profile"
    token = tokens_for(provider.url, alice)["access_token"]
    answers = {
        "userinfo refused": HTTP.get(userinfo_url, headers={"authorization": f"Bearer {token}"}),
        "userinfo no token": HTTP.get(userinfo_url),
        "profile refused": HTTP.get(profile_url, headers={"authorization": f"Bearer {token}"}),
        "profile no token": HTTP.get(profile_url),
        "admin grants": HTTP.get(f"{provider.url}/admin/grants", auth=RS_AUTH),
        "admin unknown user": HTTP.post(
            f"{provider.url}/admin/revoke-user", data={"username": "nobody"}, auth=RS_AUTH
        ),
        "admin unauthenticated": HTTP.get(f"{provider.url}/admin/grants"),
    }
    own = tokens_for(provider.url, alice, scope="read", resource=profile_url)["access_token"]
    answers["profile"] = HTTP.get(profile_url, headers={"authorization": f"Bearer {own}"})
    assert answers["profile"].status_code == 200, answers["profile"].text
    assert answers["admin grants"].status_code == 200
    for name, answer in answers.items():
        assert answer.headers.get("cache-control") == "no-store", name
        assert answer.headers.get("pragma") == "no-cache", name


# -- forms post only here, and the consent's decision goes only to the client --------------------


def form_action(response: httpx.Response) -> list[str]:
    policy = response.headers["content-security-policy"]
    directive = next(d.strip() for d in policy.split(";") if d.strip().startswith("form-action"))
    return directive.split()[1:]


def test_pages_let_forms_post_only_to_the_provider(provider, alice):
    anonymous = Browser(provider.url)
    for page in (
        anonymous.http.get("/device"),
        anonymous.http.get("/authorize", params=auth_params()[0]),
        alice.http.get("/device"),
        anonymous.http.get("/authorize", params={"client_id": "nope"}),
    ):
        assert form_action(page) == ["'self'"], page.text[:200]


def test_consent_page_lets_its_form_lead_only_to_the_validated_redirect_origin(provider, alice):
    elsewhere = auth_params(redirect_uri="http://127.0.0.1:4567/cb")[0]
    refused = alice.authorize(decision=None, **elsewhere)
    assert refused.status_code == 400  # not a registered path: no consent, no widening
    assert form_action(refused) == ["'self'"]
    consent = alice.authorize(decision=None, **auth_params(redirect_uri=REDIRECT_URI)[0])
    assert form_action(consent) == ["'self'", "http://127.0.0.1:8976"]
    ipv6 = alice.authorize(decision=None, **auth_params(redirect_uri="http://[::1]:5/callback")[0])
    assert form_action(ipv6) == ["'self'", "http:"]  # CSP cannot spell an IPv6 address


def test_consent_decision_answers_303(provider, alice):
    """RFC 9700 §4.12: after the consent POST, a 303 so the browser does not re-POST the
    form (with the user's decision) to the client."""
    for decision in ("approve", "deny"):
        answer = alice.authorize(decision=decision, **auth_params()[0])
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"].startswith(REDIRECT_URI + "?")


# -- a real browser enforces form-action on the consent's redirect ------------------------------


class IPv6HTTPServer(HTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture(params=["127.0.0.1", "[::1]"])
def loopback_listener(request) -> Iterator[tuple[str, list[str]]]:
    """An app's loopback redirect listener (RFC 8252 §7.3) on IPv4 or IPv6: its URL and the
    queries it got."""
    queries: list[str] = []

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server hook name
            if urlsplit(self.path).path == "/callback":  # not /favicon.ico
                queries.append(urlsplit(self.path).query)
            body = b"<!doctype html><title>done</title><p>Signed in"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host = request.param
    if host == "[::1]":
        server: HTTPServer = IPv6HTTPServer(("::1", 0), Callback)
    else:
        server = HTTPServer((host, 0), Callback)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{host}:{server.server_port}/callback", queries
    server.shutdown()
    server.server_close()


def test_chromium_completes_consent_to_a_loopback_redirect_under_form_action(
    provider, loopback_listener
):
    """Chromium applies form-action to the redirect that follows the consent form's POST: with
    the page's policy the decision still reaches the app's loopback listener with its code,
    on 127.0.0.1 and on [::1] alike."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (scripts/install.sh --test installs it)")
    redirect_uri, queries = loopback_listener
    params, _ = auth_params(redirect_uri=redirect_uri)
    url = str(httpx.URL(f"{provider.url}/authorize", params=params))
    with headless_chromium() as browser:
        page = browser.new_page()
        page.goto(url)
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "password123")
        page.click("button[type=submit]")
        page.click("button[name=decision][value=approve]")
        page.wait_for_url(re.compile(re.escape(redirect_uri) + r"\?"), timeout=15_000)
        assert "Signed in" in page.content()
    [query] = [parse_qs(query) for query in queries]
    assert query["code"] and query["state"] == ["xyz-state"] and query["iss"] == [provider.url]
