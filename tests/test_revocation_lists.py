"""The resource server's memory of revocation events (revocations.py) and the kept answers it
evicts (caches.IndexedAnswers), as pure logic with a controlled clock."""

from __future__ import annotations

from mcp_oauth.common.security_events import (
    SESSION_REVOKED,
    SESSIONS_REVOKED,
    TOKEN_HASHES,
    TOKENS_EXPIRE_AT,
    TOKENS_REVOKED,
)
from mcp_oauth.resource_server.caches import IndexedAnswers
from mcp_oauth.resource_server.revocation_stream import ssf_configuration_url
from mcp_oauth.resource_server.revocations import Revocations, event_subject, token_hash

ISSUER = "https://auth.example"


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def session(user: str, family: str) -> dict:
    user_id = {"format": "iss_sub", "iss": ISSUER, "sub": user}
    return {"format": "complex", "user": user_id, "session": {"format": "opaque", "id": family}}


def test_listed_tokens_are_refused_until_they_would_have_expired():
    clock = Clock()
    revocations = Revocations(clock)
    hashed = token_hash("a-token")
    event = {TOKEN_HASHES: [hashed.upper()], TOKENS_EXPIRE_AT: clock.now + 60}
    revocations.apply(TOKENS_REVOKED, event, session("alice", "f1"), clock.now)
    assert "security event" in revocations.refusal(hashed)
    assert revocations.refusal(token_hash("another")) is None
    clock.now += 61
    assert revocations.refusal(hashed) is None  # expired anyway: forgotten


def test_a_revoked_session_refuses_every_token_of_its_family_and_no_other():
    revocations = Revocations(Clock())
    revoked = revocations.apply(SESSION_REVOKED, {}, session("alice", "f1"), 0)
    assert revoked.family == "f1" and revoked.subject is None
    assert revocations.claims_refusal({"sid": "f1", "sub": "alice", "iat": 5}) is not None
    assert revocations.claims_refusal({"sid": "f2", "sub": "alice", "iat": 5}) is None
    # tokens-revoked names the family only as context: the family lives on
    revocations.apply(TOKENS_REVOKED, {}, session("bob", "f3"), 0)
    assert revocations.claims_refusal({"sid": "f3", "sub": "bob", "iat": 5}) is None


def test_a_users_revocation_refuses_only_tokens_issued_before_it():
    clock = Clock()
    revocations = Revocations(clock)
    user = {"format": "iss_sub", "iss": ISSUER, "sub": "bob"}
    revoked = revocations.apply(SESSIONS_REVOKED, {}, user, clock.now + 0.5)
    assert revoked.subject == "bob" and revoked.issued_before == int(clock.now)
    assert revocations.claims_refusal({"sub": "bob", "iat": clock.now - 1}) is not None
    # issued in the second of the revocation: listed by hash if it was live, else newer
    assert revocations.claims_refusal({"sub": "bob", "iat": clock.now}) is None
    assert revocations.claims_refusal({"sub": "alice", "iat": clock.now - 1}) is None


def test_subject_identifiers_are_read_only_in_their_rfc_9493_shapes():
    assert event_subject(session("alice", "f1")) == ("alice", "f1")
    assert event_subject({"format": "iss_sub", "iss": ISSUER, "sub": "bob"}) == ("bob", None)
    assert event_subject({"format": "email", "email": "bob@example.com"}) == (None, None)
    assert event_subject("bob") == (None, None)
    assert event_subject({"format": "complex", "user": {"format": "iss_sub", "sub": 7}}) == (
        None,
        None,
    )


def test_kept_answers_are_evicted_by_hash_family_and_user():
    clock = Clock()
    kept = IndexedAnswers(100, clock)
    kept.put("h1", "alice-1", 300, {"sid": "f1", "sub": "alice", "iat": 10})
    kept.put("h2", "alice-2", 300, {"sid": "f2", "sub": "alice", "iat": 20})
    kept.put("h3", "bob-1", 300, {"sid": "f3", "sub": "bob", "iat": 10})
    kept.put("h4", "carol-1", 300, {"sid": "f4", "sub": "carol", "iat": 10})
    assert kept.evict(["h4"]) == 1 and kept.get("h4") is None
    assert kept.evict(family="f1") == 1 and kept.get("h1") is None and kept.get("h2")
    assert kept.evict(subject="alice", issued_before=15) == 0  # h2 was issued after
    assert kept.evict(subject="bob", issued_before=15) == 1
    assert kept.get("h2") == "alice-2" and kept.evicted == 3
    clock.now += 301
    assert kept.get("h2") is None and len(kept) == 0


def test_the_transmitter_metadata_url_puts_the_well_known_path_before_the_issuer_path():
    assert ssf_configuration_url("https://a.example") == (
        "https://a.example/.well-known/ssf-configuration"
    )
    assert ssf_configuration_url("https://a.example/tenant/x/") == (
        "https://a.example/.well-known/ssf-configuration/tenant/x"
    )
