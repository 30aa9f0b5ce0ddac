"""The resource server's token rules where they are pure: no server, no network."""

from __future__ import annotations

import hashlib

import pytest

from mcp_oauth.resource_server.argument_errors import argument_message
from mcp_oauth.resource_server.caches import hashed_key
from mcp_oauth.resource_server.caller import data_owner, display_name
from mcp_oauth.resource_server.challenges import quotable
from mcp_oauth.resource_server.gate import MAX_BEARER_TOKEN_BYTES, malformed_token_reason
from mcp_oauth.resource_server.introspection import attributed, entry_lifetime, refusal
from mcp_oauth.resource_server.on_behalf_of import entra_obo_form, exchange_key, token_exchange_form
from mcp_oauth.resource_server.provider_discovery import (
    Backoff,
    ProviderMetadata,
    blames_the_token,
    introspection_outage,
)
from mcp_oauth.resource_server.verified_token import VerifiedToken, audiences

ISSUER = "http://127.0.0.1:9000"
RESOURCE = "http://127.0.0.1:8000/mcp"
NOW = 1_800_000_000.0


def answer(**overrides) -> dict:
    """An active introspection answer as our provider gives it, for RESOURCE."""
    base = {
        "active": True,
        "scope": "read write",
        "client_id": "mcp-client",
        "username": "alice",
        "sub": "alice",
        "aud": RESOURCE,
        "iss": ISSUER,
        "exp": int(NOW) + 3600,
        "iat": int(NOW),
        "token_type": "Bearer",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def refused(a: dict) -> str | None:
    """Why `a`, arriving from our provider (so attributed, as the verifier does), is refused."""
    return refusal(attributed(a, ISSUER), resource=RESOURCE, issuer=ISSUER, now=NOW)


# -- what an introspection answer must say -------------------------------------------------


def test_inactive_is_refused():
    inactive = f"{ISSUER} reports the token inactive (expired, revoked or unknown)"
    assert refused({"active": False}) == inactive
    assert refused(answer(active="true")) == inactive  # only JSON true counts


def test_audience_must_include_this_resource():
    assert refused(answer(aud="http://127.0.0.1:8001/mcp")) == (
        f"token audience 'http://127.0.0.1:8001/mcp' is not this server ({RESOURCE})"
    )
    assert "audience" in refused(answer(aud=None))  # a token requested without `resource`
    assert "audience" in refused(answer(aud=["https://other.example/api"]))
    assert refused(answer(aud=["https://other.example/api", RESOURCE])) is None
    assert refused(answer(aud=RESOURCE + "/")) is None  # a trailing slash names the same URL


def test_issuer_must_be_our_provider():
    assert refused(answer(iss="http://evil.example")) == (
        f"token issuer 'http://evil.example' is not {ISSUER}"
    )
    assert "token issuer" in refused(answer(iss=ISSUER + "/"))  # RFC 8414: compared verbatim
    assert "token issuer" in refused({**answer(), "iss": ""})  # present, however empty
    assert "token issuer None" in refused({**answer(), "iss": None})  # present as JSON null


def test_an_answer_without_iss_speaks_for_the_provider_that_gave_it():
    """RFC 7662 §2.2 requires only `active` (Glewlwyd names no `iss`): an answer from our
    provider's own introspection endpoint, to our authenticated call, is that provider's."""
    assert refused(answer(iss=None)) is None
    assert attributed(answer(iss=None), ISSUER)["iss"] == ISSUER
    assert attributed(answer(iss="http://evil.example"), ISSUER)["iss"] == "http://evil.example"
    # Attributed once, where the answer arrives: refusal() takes the answer as it comes.
    unattributed = refusal(answer(iss=None), resource=RESOURCE, issuer=ISSUER, now=NOW)
    assert unattributed == f"token issuer None is not {ISSUER}"
    # Every other rule still holds for it.
    assert "audience" in refused(answer(iss=None, aud="http://127.0.0.1:8001/mcp"))
    assert refused(answer(iss=None, exp=int(NOW))) == "token expired"


def test_expired_and_refresh_tokens_are_refused():
    assert refused(answer(exp=int(NOW))) == "token expired"
    assert refused(answer(exp="tomorrow")) == "token expired"
    assert "token_type" in refused(answer(token_type="refresh_token"))
    assert refused(answer(token_type="bearer")) is None


def test_audiences_accepts_string_or_list_only():
    assert audiences("a") == ["a"]
    assert audiences(["a", 3, "b"]) == ["a", "b"]
    assert audiences(None) == []
    assert audiences({"a": 1}) == []


# -- how long a cached answer lives ----------------------------------------------------------


def test_entry_lives_the_ttl_when_the_token_lives_longer():
    assert entry_lifetime(60, NOW + 3600, NOW) == 60


def test_entry_never_outlives_the_token():
    assert entry_lifetime(60, NOW + 12.5, NOW) == 12.5


def test_entry_without_exp_lives_the_ttl():
    assert entry_lifetime(60, None, NOW) == 60


# -- the cache never holds the token ---------------------------------------------------------


def test_cache_key_is_a_sha256_not_the_token():
    token = "opaque-token-value-0123456789"
    key = hashed_key(token)
    assert key == hashlib.sha256(token.encode()).digest()
    assert token.encode() not in key and token not in key.hex()
    assert hashed_key(token) == key and hashed_key(token + "x") != key


def test_cached_verified_token_holds_no_token_but_hands_it_to_the_request():
    verified = VerifiedToken.from_introspection(answer(), RESOURCE)
    assert "token" not in verified.__slots__
    access = verified.access_token("the-token")
    assert access.token == "the-token"
    assert (access.client_id, access.subject, access.scopes) == (
        "mcp-client",
        "alice",
        ["read", "write"],
    )
    assert access.resource == RESOURCE and access.claims["iss"] == ISSUER


def test_verified_token_tolerates_odd_answer_shapes():
    verified = VerifiedToken.from_introspection(answer(scope=None, sub=42), RESOURCE)
    assert verified.scopes == [] and verified.subject == "42"


# -- discovery -------------------------------------------------------------------------------


def test_metadata_keeps_the_issuer_verbatim_and_uses_the_named_endpoints():
    realm = "https://sso.example/realms/x"
    keycloak = {
        "issuer": realm,
        "introspection_endpoint": f"{realm}/protocol/openid-connect/token/introspect",
        "jwks_uri": f"{realm}/protocol/openid-connect/certs",
        "token_endpoint": f"{realm}/protocol/openid-connect/token",
    }
    metadata = ProviderMetadata.from_document(keycloak, realm)
    assert metadata.issuer == realm and metadata.document == keycloak
    assert metadata.introspection_endpoint.endswith("/protocol/openid-connect/token/introspect")
    assert metadata.jwks_uri.endswith("/certs") and metadata.token_endpoint.endswith("/token")
    with pytest.raises(ValueError, match="issuer"):
        ProviderMetadata.from_document(keycloak, "https://sso.example/realms/y")


def test_metadata_endpoints_are_optional_as_entra_has_no_introspection():
    bare = ProviderMetadata.from_document({"issuer": ISSUER, "jwks_uri": 7}, ISSUER)
    assert bare.introspection_endpoint is bare.jwks_uri is bare.token_endpoint is None
    assert bare.admin_grants_endpoint == f"{ISSUER}/admin/grants"


def test_backoff_doubles_up_to_its_cap_and_resets_on_success():
    now = [0.0]
    backoff = Backoff(first=1, cap=4, clock=lambda: now[0])
    assert backoff.remaining() == 0
    assert [backoff.failed() for _ in range(4)] == [1, 2, 4, 4]
    assert backoff.remaining() == 4
    now[0] += 4
    assert backoff.remaining() == 0
    backoff.succeeded()
    assert backoff.failed() == 1


# -- what a 401 may say, and token exchange requests ------------------------------------------


def test_refusal_reason_is_made_safe_for_the_challenge_header():
    assert quotable("token issuer 'x' is not y") == "token issuer 'x' is not y"
    assert quotable('token issuer "a\\b\r\nSet-Cookie: x" é') == (
        "token issuer 'a?b??Set-Cookie: x' ?"
    )
    assert len(quotable("x" * 1000)) == 300


def test_exchange_forms_carry_the_callers_token_only_to_the_provider():
    assert token_exchange_form("t", "http://as/userinfo") == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "t",
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "resource": "http://as/userinfo",
    }
    assert token_exchange_form("t", "downstream-api")["audience"] == "downstream-api"
    assert entra_obo_form("t", "api://downstream/") == {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": "t",
        "requested_token_use": "on_behalf_of",
        "scope": "api://downstream/.default",
    }


def test_exchange_cache_key_is_per_user_scopes_and_audience():
    key = exchange_key("alice", ["write", "read"], "http://as/userinfo")
    assert key == exchange_key("alice", ["read", "write"], "http://as/userinfo")
    assert key != exchange_key("alice", ["read"], "http://as/userinfo")
    assert key != exchange_key("bob", ["read", "write"], "http://as/userinfo")
    assert key != exchange_key("alice", ["read", "write"], "http://other/api")


# -- what is the token's fault, and whose data is whose -----------------------------------------


def test_only_a_bad_request_about_the_token_refuses_it():
    assert blames_the_token(400, "invalid_request") and blames_the_token(413, None)
    assert not blames_the_token(400, "invalid_client")  # our credentials, said with a 400
    for status in (401, 403, 404, 405, 429):
        assert not blames_the_token(status, None)
    assert "MCP_RS_CLIENT_SECRET" in introspection_outage(401, "invalid_client")
    assert "MCP_RS_CLIENT_SECRET" in introspection_outage(400, "invalid_client")
    assert "slow down" in introspection_outage(429, None)
    assert "MCP_RS_CLIENT_SECRET" not in introspection_outage(404, None)


def test_bearer_token_syntax_is_rfc_6750_b64token_of_bounded_length():
    for good in ["abc", "a-b.c_d~e+f/g==", "a" * MAX_BEARER_TOKEN_BYTES]:
        assert malformed_token_reason(good) is None
    for bad in ["", "a b", "a\tb", "a=b", "=", "tök", 'a"b', "a" * (MAX_BEARER_TOKEN_BYTES + 1)]:
        assert malformed_token_reason(bad) is not None, bad


def test_a_client_acting_for_itself_never_shares_a_users_data():
    assert data_owner("alice", "alice", "mcp-client") == "user:alice"
    assert data_owner("alice", None, "alice") == "client:alice"  # client credentials
    assert data_owner(None, None, "svc") == "client:svc"
    assert data_owner("alice", "alice", "alice") == "user:alice"  # alice, via a client "alice"
    assert data_owner("5e1f", None, "mcp-client") == "user:5e1f"  # a user known by sub only


def test_display_name_from_preferred_username_or_username_data_filed_by_subject():
    assert display_name({"preferred_username": "alice", "username": "al", "sub": "5e1f"}) == "alice"
    assert display_name({"username": "alice", "sub": "5e1f"}) == "alice"  # RFC 7662 / Glewlwyd
    assert display_name({"preferred_username": "", "username": "alice"}) == "alice"
    assert display_name({"sub": "5e1f"}) is None  # shown by subject then
    # Whatever the name, data is filed under the stable subject, never the (changeable) name.
    assert data_owner("5e1f", "alice", "mcp-client") == "user:5e1f"
    assert data_owner("5e1f", "alice-renamed", "mcp-client") == "user:5e1f"


def test_argument_message_names_each_argument():
    errors = [
        {"loc": ("note_id",), "msg": "Input should be a valid integer"},
        {"loc": ("items", 0), "msg": "Field required"},
    ]
    assert argument_message(errors) == (
        "Invalid argument note_id: Input should be a valid integer; items.0: Field required"
    )
