"""Security Event Tokens (RFC 8417) for the revocations the log recorded, in the shapes of the
OpenID Shared Signals Framework 1.0, signed with the provider's key (the one at /jwks.json).

- A family revoked (refresh revocation, refresh or code replay): CAEP `session-revoked`, its
  subject the user (`iss_sub`) and the family as the session (SSF 1.0 §3.2 `complex`).
- Every family of a user (the admin API): RISC `sessions-revoked`, its subject the user.
- Single access tokens (RFC 7009 revocation of one, with what was exchanged for it): this
  project's `tokens-revoked`, subject as for a family.
Each names the access tokens it ends by the SHA-256 the provider stores (never the token) and
their latest expiry, so a receiver knows how long to remember them.
"""

from __future__ import annotations

from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from mcp_oauth.common.security_events import (
    SESSION_REVOKED,
    SESSIONS_REVOKED,
    SET_TYPE,
    TOKEN_HASHES,
    TOKENS_EXPIRE_AT,
    TOKENS_REVOKED,
)
from mcp_oauth.provider.storage.security_events import StoredEvent

EVENT_TYPE_OF_KIND = {
    "session": SESSION_REVOKED,
    "user": SESSIONS_REVOKED,
    "tokens": TOKENS_REVOKED,
}


def subject_identifier(issuer: str, facts: dict[str, Any]) -> dict[str, Any]:
    """RFC 9493 §3.2.4 `iss_sub` for the user (or the client, for its own tokens); with the
    family as an `opaque` session inside an SSF 1.0 §3.2 `complex` subject when one is named."""
    user = {"format": "iss_sub", "iss": issuer, "sub": facts["subject"]}
    if not facts.get("family"):
        return user
    session = {"format": "opaque", "id": facts["family"]}
    return {"format": "complex", "user": user, "session": session}


def event_claims(issuer: str, audience: str, event: StoredEvent) -> dict[str, Any]:
    """The SET's claims (RFC 8417 §2.2): addressed to one receiver's client id, identified by
    `jti`, its `events` holding one event (SSF 1.0 §4.1), CAEP members first."""
    facts = event.facts
    return {
        "iss": issuer,
        "aud": audience,
        "iat": event.created_at,
        "jti": event.jti,
        "toe": facts["at"],
        "sub_id": subject_identifier(issuer, facts),
        "events": {
            EVENT_TYPE_OF_KIND[facts["kind"]]: {
                "event_timestamp": int(facts["at"]),
                "initiating_entity": facts["by"],
                "reason_admin": {"en": facts["reason"]},
                TOKEN_HASHES: facts["tokens"],
                TOKENS_EXPIRE_AT: event.keep_until,
            }
        },
    }


def signed_event(key: RSAKey, issuer: str, audience: str, event: StoredEvent) -> str:
    """The SET as a JWS with `typ: secevent+jwt` (RFC 8417 §2.3), RS256 with our key."""
    header = {"alg": "RS256", "typ": SET_TYPE, "kid": key.kid}
    return jwt.encode(header, event_claims(issuer, audience, event), key)
