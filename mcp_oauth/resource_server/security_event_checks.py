"""Checks of one Security Event Token from the provider's stream, each a small function naming
its RFC. A SET that fails any of them is ignored (and reported back in `setErrs`)."""

from __future__ import annotations

from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from mcp_oauth.common.security_events import EVENT_TYPES, SET_TYPE
from mcp_oauth.resource_server.verified_token import audiences


class SetRefused(ValueError):
    """A SET this server ignores; `code` is the RFC 8935 §2.4 error code for `setErrs`."""

    def __init__(self, code: str, description: str):
        super().__init__(description)
        self.code = code


def set_key_id(value: str) -> str | None:
    """The `kid` of the SET's JWS header (RFC 7515 §4.1.4), to pick the verification key."""
    try:
        kid = extract_compact(value.encode()).headers().get("kid")
    except (JoseError, ValueError, TypeError, UnicodeError) as exc:
        raise SetRefused("invalid_request", f"not a compact JWS: {exc}") from None
    return kid if isinstance(kid, str) else None


def verified_set(value: str, keys: KeySet) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a SET signed (RS256) by a key of the provider's key set
    (RFC 8417 §5.1.1: a SET is only trusted with its issuer's signature)."""
    try:
        token = jwt.decode(value, keys, algorithms=["RS256"])
    except (JoseError, ValueError, TypeError) as exc:
        raise SetRefused("invalid_key", f"signature not verified: {exc!r}") from None
    return dict(token.header), dict(token.claims)


def check_set_type(header: dict[str, Any]) -> None:
    """RFC 8417 §2.3: `typ` is `secevent+jwt`, so no other JWT passes for an event."""
    if str(header.get("typ", "")).lower() != SET_TYPE:
        raise SetRefused("invalid_request", f"typ {header.get('typ')!r} is not {SET_TYPE}")


def check_set_issuer(claims: dict[str, Any], issuer: str) -> None:
    """RFC 8417 §2.2 `iss`: our provider exactly (RFC 8414 §3.3 comparison)."""
    if claims.get("iss") != issuer:
        raise SetRefused("invalid_issuer", f"iss {claims.get('iss')!r} is not {issuer}")


def check_set_audience(claims: dict[str, Any], audience: str) -> None:
    """RFC 8417 §2.2 `aud`: addressed to this receiver (our client id at the provider)."""
    if audience not in audiences(claims.get("aud")):
        raise SetRefused("invalid_audience", f"aud {claims.get('aud')!r} is not {audience}")


def set_events(claims: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """RFC 8417 §2.2 `events`: an object of event type URI to event; the ones this server
    understands (others are acknowledged and ignored, as §2.2 allows), and a `jti`."""
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(claims.get("jti"), str):
        raise SetRefused("invalid_request", "a SET needs an events object and a jti")
    return [
        (event_type, event)
        for event_type, event in events.items()
        if event_type in EVENT_TYPES and isinstance(event, dict)
    ]
