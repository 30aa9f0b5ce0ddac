"""Attacks on the revocation event stream (issue 13), against the real provider on SQLite and
on PostgreSQL (the conftest `provider` fixture):

- only resource-server clients may create, read or poll a stream;
- a forged SET (another key) or one addressed to another receiver or from another issuer is
  ignored by the receiver, and reported back as an RFC 8935 error;
- a stream whose unacknowledged events were pruned is told so (409), never silently skipped;
- bad poll requests get a 4xx, never a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from mcp_oauth.common.security_events import SESSION_REVOKED, SET_TYPE, TOKEN_HASHES
from mcp_oauth.provider.storage.clients import ClientStore
from mcp_oauth.provider.storage.database import Database
from mcp_oauth.provider.storage.janitor import Janitor, Retention
from mcp_oauth.resource_server.key_set import KeySetCache
from mcp_oauth.resource_server.provider_discovery import Provider
from mcp_oauth.resource_server.revocation_stream import RevocationStream
from mcp_oauth.resource_server.revocations import Revocations, token_hash
from tests.conftest import RS_AUTH
from tests.oauth_helpers import CLIENT_ID
from tests.test_security import tokens_for

HOUR = 3600


def create_stream(issuer: str, auth) -> httpx.Response:
    body = {"delivery": {"method": "urn:ietf:rfc:8936"}}
    return httpx.post(f"{issuer}/ssf/stream", json=body, auth=auth)


def poll(endpoint: str, auth=RS_AUTH, **body) -> httpx.Response:
    return httpx.post(endpoint, json={"returnImmediately": True, **body}, auth=auth, timeout=30)


def revoke(issuer: str, token: str) -> None:
    response = httpx.post(f"{issuer}/revoke", data={"token": token, "client_id": CLIENT_ID})
    assert response.status_code == 200


def test_the_transmitter_metadata_is_published(provider):
    configuration = httpx.get(f"{provider.url}/.well-known/ssf-configuration").json()
    assert configuration["issuer"] == provider.url
    assert configuration["jwks_uri"] == f"{provider.url}/jwks.json"
    assert configuration["delivery_methods_supported"] == ["urn:ietf:rfc:8936"]
    assert configuration["configuration_endpoint"] == f"{provider.url}/ssf/stream"


def test_a_client_that_is_not_a_resource_server_cannot_read_the_stream(provider):
    stream = create_stream(provider.url, RS_AUTH)
    assert stream.status_code == 201, stream.text
    endpoint = stream.json()["delivery"]["endpoint_url"]
    stream_id = stream.json()["stream_id"]
    registered = httpx.post(
        f"{provider.url}/register",
        json={"redirect_uris": ["https://app.example/cb"], "client_name": "curious"},
    ).json()
    confidential = (registered["client_id"], registered["client_secret"])
    public = (CLIENT_ID, "")
    wrong_secret = (RS_AUTH[0], "not-the-secret")
    for auth, status in [(None, 401), (public, 401), (wrong_secret, 401), (confidential, 403)]:
        attempts = [
            create_stream(provider.url, auth),
            httpx.get(f"{provider.url}/ssf/stream", params={"stream_id": stream_id}, auth=auth),
            poll(endpoint, auth),
            httpx.delete(f"{provider.url}/ssf/stream", params={"stream_id": stream_id}, auth=auth),
        ]
        for refused in attempts:
            assert refused.status_code == status, (auth and auth[0], refused.text)
            assert refused.json()["error"] == "invalid_client"
            assert "sets" not in refused.json()
    assert poll(endpoint).status_code == 200  # the stream is still there, for its owner only


def drained_stream(issuer: str) -> str:
    """A new stream's poll endpoint, with the events it starts with (those of earlier tests
    whose tokens still live) acknowledged."""
    endpoint = create_stream(issuer, RS_AUTH).json()["delivery"]["endpoint_url"]
    while sets := poll(endpoint).json()["sets"]:
        poll(endpoint, ack=list(sets), maxEvents=0)
    return endpoint


def real_set(provider) -> tuple[str, dict]:
    """A SET the provider really delivered to the resource server (a family revoked: CAEP
    session-revoked), and its claims."""
    endpoint = drained_stream(provider.url)
    tokens = tokens_for(provider.url, _browser(provider))
    revoke(provider.url, tokens["refresh_token"])
    sets = poll(endpoint).json()["sets"]
    assert len(sets) == 1
    value = next(iter(sets.values()))
    claims = jwt.decode(value, RSAKey.import_key(signing_key(provider))).claims
    # The tokens are named by their SHA-256 only, never shown.
    event = claims["events"][SESSION_REVOKED]
    assert event[TOKEN_HASHES] == [token_hash(tokens["access_token"])]
    for secret in (tokens["access_token"], tokens["refresh_token"]):
        assert secret not in json.dumps(claims)
    return value, claims


def _browser(provider):
    from tests.oauth_helpers import Browser

    return Browser(provider.url, "alice", "password123")


def signing_key(provider) -> dict:
    """The provider's private signing key, as an attacker who could sign would hold it."""
    db = Database(provider.database_url)
    key = json.loads(db.server_secret("jwt_signing_key", lambda: ""))
    db.engine.dispose()
    return key


def receive(provider, sets: dict[str, str]) -> tuple[Revocations, list[str], dict]:
    """What a receiver (the resource server's own code, against the real provider's key set)
    makes of `sets`: its deny-lists, the jtis it acknowledges and the ones it refuses."""

    async def run():
        async with httpx.AsyncClient(timeout=10) as http:
            revocations = Revocations()
            stream = RevocationStream(
                Provider(provider.url, *RS_AUTH, http),
                RS_AUTH[0],
                RS_AUTH[1],
                revocations,
                fall_back=lambda: None,
                healthy=lambda: None,
                evict=lambda revoked: None,
            )
            keys = KeySetCache(f"{provider.url}/jwks.json", http)
            acks, errors = await stream._apply(sets, keys, provider.url)
            return revocations, acks, errors

    return asyncio.run(run())


def test_a_forged_or_wrongly_addressed_set_is_ignored(provider):
    genuine, claims = real_set(provider)
    key = RSAKey.import_key(signing_key(provider))
    forger = RSAKey.generate_key(2048, parameters={"kid": key.kid})  # same kid, other key
    victims = {}

    def variant(name: str, signer: RSAKey, typ: str = SET_TYPE, **changed) -> str:
        victims[name] = token_hash(f"a-token-for-{name}-{uuid.uuid4()}")
        event = {**claims["events"][SESSION_REVOKED], TOKEN_HASHES: [victims[name]]}
        forged = {**claims, "jti": name, "events": {SESSION_REVOKED: event}, **changed}
        return jwt.encode({"alg": "RS256", "typ": typ, "kid": key.kid}, forged, signer)

    sets = {
        "forged": variant("forged", forger),
        "another audience": variant("another audience", key, aud="another-resource-server"),
        "another issuer": variant("another issuer", key, iss="http://attacker.example"),
        "not a SET": variant("not a SET", key, typ="at+jwt"),
        "genuine-copy": variant("genuine-copy", key),  # the control: properly signed and sent
    }
    revocations, acks, errors = receive(provider, sets)
    assert acks == ["genuine-copy"]
    assert {jti: error["err"] for jti, error in errors.items()} == {
        "forged": "invalid_key",
        "another audience": "invalid_audience",
        "another issuer": "invalid_issuer",
        "not a SET": "invalid_request",
    }
    for name, hashed in victims.items():
        refused = revocations.refusal(hashed)
        assert (refused is not None) == (name == "genuine-copy"), name
    assert receive(provider, {claims["jti"]: genuine})[1] == [claims["jti"]]


def test_a_stream_that_lost_events_is_told_so(provider):
    """Events the stream had not acknowledged were pruned: its next poll is 409 events_lost,
    so its receiver falls back; a new stream works."""
    endpoint = create_stream(provider.url, RS_AUTH).json()["delivery"]["endpoint_url"]
    revoke(provider.url, tokens_for(provider.url, _browser(provider))["access_token"])
    db = Database(provider.database_url)
    try:
        # Two hours after the token expired, with an hour's retention: the event goes.
        later = int(time.time()) + 3 * HOUR + 60
        retention = Retention(retention=HOUR, unused_client=HOUR, idle_stream=100 * HOUR)
        Janitor(db, retention, ClientStore(db)).sweep(at=later)
    finally:
        db.engine.dispose()
    lost = poll(endpoint)
    assert lost.status_code == 409 and lost.json()["error"] == "events_lost"
    fresh = create_stream(provider.url, RS_AUTH).json()["delivery"]["endpoint_url"]
    assert poll(fresh).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"maxEvents": -1}',
        b'{"maxEvents": "5"}',
        b'{"maxEvents": true}',
        b'{"ack": "jti"}',
        b'{"ack": [1]}',
        b'{"setErrs": []}',
        b'{"returnImmediately": "yes"}',
        b'{"ack": [' + b",".join([b'"x"'] * 1001) + b"]}",
    ],
)
def test_a_bad_poll_is_400_never_a_5xx(provider, body):
    endpoint = create_stream(provider.url, RS_AUTH).json()["delivery"]["endpoint_url"]
    response = httpx.post(endpoint, content=body, auth=RS_AUTH)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_an_unknown_stream_is_404_and_only_poll_delivery_is_offered(provider):
    unknown = poll(f"{provider.url}/ssf/poll/{uuid.uuid4()}")
    assert unknown.status_code == 404
    push = httpx.post(
        f"{provider.url}/ssf/stream",
        json={"delivery": {"method": "urn:ietf:rfc:8935"}},
        auth=RS_AUTH,
    )
    assert push.status_code == 400 and push.json()["error"] == "invalid_request"
