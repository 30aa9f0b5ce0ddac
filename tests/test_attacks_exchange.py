"""Token exchange (RFC 8693) attacks: each escape from the user's grant the security review
found, tried again. The exchanged token must never outlive its subject token, must die with
it and with its family, must only come from a token issued for the exchanging client, and
must not be exchanged again unless users.yaml says so (then `act` nests)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import RS_AUTH, start_provider
from tests.oauth_helpers import CLIENT_ID, Browser, code_for, redeem

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
DOWNSTREAM = "https://downstream.example/api"
# Two more exchanging clients for the chain tests: both serve /api/profile (so a token exchanged
# for /api/profile is "for" them) and may ask for DOWNSTREAM; only the second accepts exchanged
# tokens.
HOP_STRICT = ("hop-strict", "hop-strict-secret-0123456789abcdef")
HOP_CHAIN = ("hop-chain", "hop-chain-secret-0123456789abcdef0")


def users_file(path: Path) -> Path:
    """The repository's users.yaml plus the two hop clients."""
    raw = yaml.safe_load((Path(__file__).parent.parent / "users.yaml").read_text())
    for (client_id, _secret), accepts in ((HOP_STRICT, False), (HOP_CHAIN, True)):
        raw["clients"].append(
            {
                "client_id": client_id,
                "token_endpoint_auth_method": "client_secret_basic",
                "client_secret_env": f"SECRET_{client_id.replace('-', '_').upper()}",
                "grant_types": [EXCHANGE],
                "scope": "read",
                "exchange": {
                    "serves": ["/api/profile"],
                    "audiences": [DOWNSTREAM],
                    "accepts_exchanged_tokens": accepts,
                },
            }
        )
    target = path / "users.yaml"
    target.write_text(yaml.safe_dump(raw))
    return target


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def provider(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exchange-attacks")
    database_url = None
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgres_database")
    handle = start_provider(
        tmp,
        database_url,
        env={
            "OAUTH_RESOURCES": f"http://127.0.0.1:8000/mcp,{DOWNSTREAM}",
            "SECRET_HOP_STRICT": HOP_STRICT[1],
            "SECRET_HOP_CHAIN": HOP_CHAIN[1],
        },
        args=["--users", str(users_file(tmp))],
    )
    handle.resource = "http://127.0.0.1:8000/mcp"
    yield handle
    handle.process.stop()


def user_tokens(provider, username="alice", password="password123", resource=None) -> dict:
    browser = Browser(provider.url, username, password)
    resource = resource or provider.resource
    code, verifier, _ = code_for(browser, scope="read", resource=resource)
    response = redeem(provider.url, code, verifier, resource=resource)
    assert response.status_code == 200, response.text
    return response.json()


def exchange(provider, subject: str, auth=RS_AUTH, target: str | None = None) -> httpx.Response:
    data = {
        "grant_type": EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS,
        "resource": target or f"{provider.url}/api/profile",
    }
    return httpx.post(f"{provider.url}/token", data=data, auth=auth)


def exchanged(provider, subject: str, auth=RS_AUTH, target: str | None = None) -> dict:
    response = exchange(provider, subject, auth, target)
    assert response.status_code == 200, response.text
    return response.json()


def introspect(provider, token: str) -> dict:
    return httpx.post(f"{provider.url}/introspect", data={"token": token}, auth=RS_AUTH).json()


def refresh(provider, refresh_token: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT_ID}
    return httpx.post(f"{provider.url}/token", data=data)


def next_second() -> None:
    """Wait until the clock's second changes, so what is issued next is issued later."""
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.02)


def refused(response: httpx.Response, error: str) -> bool:
    return response.status_code == 400 and response.json()["error"] == error


# -- lifetime ------------------------------------------------------------------------------------


def test_an_exchanged_token_never_outlives_its_subject(provider):
    subject = user_tokens(provider)["access_token"]
    next_second()
    before = int(time.time())  # the exchanged token is issued at this second or later
    downstream = exchanged(provider, subject)
    subject_exp = introspect(provider, subject)["exp"]
    assert introspect(provider, downstream["access_token"])["exp"] <= subject_exp
    assert downstream["expires_in"] <= subject_exp - before


def test_re_exchanging_cannot_extend_the_chain(provider):
    """Each hop inherits the cap: the second exchange ends no later than the first token."""
    subject = user_tokens(provider)["access_token"]
    next_second()
    first = exchanged(provider, subject)["access_token"]
    next_second()
    second = exchanged(provider, first, HOP_CHAIN, DOWNSTREAM)["access_token"]
    assert introspect(provider, second)["exp"] <= introspect(provider, subject)["exp"]


# -- dying with the grant ----------------------------------------------------------------------


def test_revoking_the_subject_token_revokes_what_was_exchanged_for_it(provider):
    subject = user_tokens(provider)["access_token"]
    first = exchanged(provider, subject)["access_token"]
    second = exchanged(provider, first, HOP_CHAIN, DOWNSTREAM)["access_token"]
    revoked = httpx.post(f"{provider.url}/revoke", data={"token": subject, "client_id": CLIENT_ID})
    assert revoked.status_code == 200
    assert [introspect(provider, t)["active"] for t in (subject, first, second)] == [False] * 3


def test_refresh_replay_detection_revokes_exchanged_tokens(provider):
    tokens = user_tokens(provider)
    downstream = exchanged(provider, tokens["access_token"])["access_token"]
    second = refresh(provider, tokens["refresh_token"]).json()
    assert refresh(provider, second["refresh_token"]).status_code == 200
    # The first refresh token again, after its successor was used: a replay, whatever grace.
    assert refused(refresh(provider, tokens["refresh_token"]), "invalid_grant")
    assert introspect(provider, downstream) == {"active": False}


def test_code_replay_revokes_exchanged_tokens(provider):
    browser = Browser(provider.url, "alice", "password123")
    code, verifier, _ = code_for(browser, scope="read", resource=provider.resource)
    tokens = redeem(provider.url, code, verifier, resource=provider.resource).json()
    downstream = exchanged(provider, tokens["access_token"])["access_token"]
    assert redeem(provider.url, code, verifier, resource=provider.resource).status_code == 400
    assert introspect(provider, downstream) == {"active": False}


def test_admin_revoke_user_revokes_exchanged_tokens(provider):
    downstream = exchanged(provider, user_tokens(provider, "bob", "secret456")["access_token"])
    answer = httpx.post(f"{provider.url}/admin/revoke-user", data={"username": "bob"}, auth=RS_AUTH)
    assert answer.status_code == 200, answer.text
    assert introspect(provider, downstream["access_token"]) == {"active": False}


# -- whose token, for what -----------------------------------------------------------------------


def test_a_token_issued_for_userinfo_cannot_be_laundered_into_an_mcp_token(provider):
    """The review's attack: another client's /api/profile token, exchanged for the MCP server."""
    profile_token = user_tokens(provider, resource=f"{provider.url}/api/profile")["access_token"]
    answer = exchange(provider, profile_token, target=provider.resource)
    assert answer.status_code == 400
    assert answer.json()["error"] in ("invalid_grant", "invalid_target")


def test_a_client_exchanges_only_tokens_issued_for_a_resource_it_serves(provider):
    """The audience it may ask for (/api/profile) is allowed; the subject token is not its own."""
    profile_token = user_tokens(provider, resource=f"{provider.url}/api/profile")["access_token"]
    assert refused(exchange(provider, profile_token), "invalid_grant")


def test_a_client_asks_only_for_the_audiences_users_yaml_lists(provider):
    """Its own token, but a target it may not ask for (itself, or another API)."""
    subject = user_tokens(provider)["access_token"]
    assert refused(exchange(provider, subject, target=provider.resource), "invalid_target")
    assert refused(exchange(provider, subject, target=DOWNSTREAM), "invalid_target")


def test_an_exchanged_token_is_not_exchanged_again_unless_configured(provider):
    first = exchanged(provider, user_tokens(provider)["access_token"])["access_token"]
    assert refused(exchange(provider, first, HOP_STRICT, DOWNSTREAM), "invalid_grant")


def test_act_nests_the_earlier_actors(provider):
    first = exchanged(provider, user_tokens(provider)["access_token"])["access_token"]
    second = exchanged(provider, first, HOP_CHAIN, DOWNSTREAM)["access_token"]
    info = introspect(provider, second)
    assert info["sub"] == "alice" and info["aud"] == DOWNSTREAM
    assert info["act"] == {"sub": HOP_CHAIN[0], "act": {"sub": "mcp-resource-server"}}


# -- subject tokens that are refused --------------------------------------------------------------


def test_revoked_refresh_and_user_less_subject_tokens_are_refused(provider):
    tokens = user_tokens(provider)
    assert refused(exchange(provider, tokens["refresh_token"]), "invalid_grant")
    httpx.post(
        f"{provider.url}/revoke", data={"token": tokens["access_token"], "client_id": CLIENT_ID}
    )
    assert refused(exchange(provider, tokens["access_token"]), "invalid_grant")
    own = httpx.post(
        f"{provider.url}/token",
        data={"grant_type": "client_credentials", "resource": provider.resource},
        auth=RS_AUTH,
    ).json()["access_token"]
    assert refused(exchange(provider, own), "invalid_grant")


def test_an_expired_subject_token_is_refused(tmp_path):
    ttl = 2
    short = start_provider(tmp_path, args=["--access-token-ttl", str(ttl)])
    try:
        subject = user_tokens(short)["access_token"]
        deadline = time.monotonic() + ttl + 5
        while introspect(short, subject)["active"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert introspect(short, subject) == {"active": False}
        assert refused(exchange(short, subject), "invalid_grant")
    finally:
        short.process.stop()
