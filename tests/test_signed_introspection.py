"""Signed introspection answers (RFC 9701) at the resource server (signed_introspection.py):
a real answer is taken, a forged one never.

Glewlwyd offers signed answers and the resource server uses them against it (see
tests/test_interop_glewlwyd.py), but Glewlwyd cannot be made to forge one. So the forgeries
come from a tiny test peer (tests/peers/signed_introspection.py) that serves real signed
answers over real HTTP, signed with its own published key, or forged in one chosen way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mcp_oauth.resource_server.introspection import IntrospectionVerifier
from mcp_oauth.resource_server.provider_discovery import Provider, ProviderUnavailable
from mcp_oauth.resource_server.signed_introspection import (
    audience_refusal,
    offered_algorithms,
    signed_answer_refusal,
)
from mcp_oauth.resource_server.verified_token import TokenRefused
from tests.peers.signed_introspection import CLIENT_ID, SignedIntrospectionPeer

RESOURCE = "http://127.0.0.1:8000/mcp"


@pytest.fixture(scope="module")
def peer() -> Iterator[SignedIntrospectionPeer]:
    with SignedIntrospectionPeer(RESOURCE) as server:
        yield server


def outcome(peer: SignedIntrospectionPeer, forge: str | None) -> Any:
    """What a fresh verifier makes of the peer's answer: the AccessToken, the refusal reason,
    or the ProviderUnavailable."""
    peer.forge = forge

    async def scenario() -> Any:
        async with httpx.AsyncClient(timeout=10) as http:
            provider = Provider(peer.issuer, CLIENT_ID, "rs-secret", http)
            verifier = IntrospectionVerifier(provider, RESOURCE)
            try:
                return await verifier.check("any-token")
            except TokenRefused as refused:
                return str(refused)
            except ProviderUnavailable as unavailable:
                return unavailable

    return asyncio.run(scenario())


def test_a_real_signed_answer_naming_no_iss_inside_is_taken(peer: SignedIntrospectionPeer):
    access = outcome(peer, None)
    assert access.scopes == ["read"] and access.subject == "alice"
    assert access.claims["iss"] == peer.issuer  # the signed answer's issuer speaks for it


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        ("foreign_key", "signature does not match any key in"),
        ("hs256_public", "introspection answer algorithm 'HS256' is not allowed"),
        ("none", "introspection answer algorithm 'none' is not allowed"),
        ("wrong_alg", "introspection answer algorithm RS384 is not declared for key"),
        ("wrong_iss", "introspection answer issuer 'http://127.0.0.1:9/evil' is not http://"),
        ("stale_iat", "introspection answer was issued at"),
        ("no_iat", "introspection answer has no numeric iat"),
        ("wrong_typ", "introspection answer typ 'JWT' is not token-introspection+jwt"),
        ("unsigned", "asked for a signed introspection answer, got 'application/json'"),
    ],
)
def test_a_forged_or_unsigned_answer_is_never_taken(
    peer: SignedIntrospectionPeer, forge: str, reason: str
):
    """Provider trouble (503), never an acceptance; not the token's fault either (a 401 would
    send its client to sign in again, in a loop)."""
    result = outcome(peer, forge)
    assert isinstance(result, ProviderUnavailable), result
    assert reason in str(result), str(result)


def test_an_answer_addressed_to_another_server_refuses_the_token(peer: SignedIntrospectionPeer):
    assert outcome(peer, "other_aud") == (
        "introspection answer audience 'another-resource-server' is not this server "
        f"({CLIENT_ID} or {RESOURCE})"
    )


def test_signed_answers_are_used_only_where_offered_with_an_algorithm_we_accept():
    assert offered_algorithms({"introspection_signing_alg_values_supported": ["RS256"]}) == {
        "RS256"
    }
    assert offered_algorithms({"introspection_signing_alg_values_supported": ["HS256"]}) == set()
    assert offered_algorithms({"issuer": "http://as"}) == set()


def test_signed_answer_rules():
    header = {"typ": "token-introspection+jwt"}
    good = {"iss": "http://as", "iat": 1000, "token_introspection": {"active": True}}
    rules = {"issuer": "http://as", "now": 1030.0, "leeway": 60}
    assert signed_answer_refusal(header, good, **rules) is None
    assert (
        signed_answer_refusal({"typ": "application/token-introspection+jwt"}, good, **rules) is None
    )
    assert "iat" in signed_answer_refusal(header, {**good, "iat": True}, **rules)
    assert "issued at" in signed_answer_refusal(header, {**good, "iat": 1100}, **rules)  # future
    assert "token_introspection" in signed_answer_refusal(
        header, {**good, "token_introspection": "active"}, **rules
    )
    names = (CLIENT_ID, RESOURCE)
    assert audience_refusal({"aud": CLIENT_ID}, names) is None
    assert audience_refusal({"aud": [RESOURCE + "/"]}, names) is None  # Glewlwyd's habit
    assert "audience None" in audience_refusal({}, names)
