"""What this server has been told is revoked, from the provider's security events, consulted
before any cached answer or verified JWT is accepted (verifier_choice.py).

An event (revocation_stream.py verified it) ends, until the latest expiry it names:
- the access tokens it lists by SHA-256 (hex): refused before the cache or the JWT is looked at;
- for CAEP `session-revoked`, the token family it names as the session: any token whose claims
  carry that family as `sid`;
- for RISC `sessions-revoked`, every token of the user it names that was issued (`iat`) before
  the event.
So a revocation takes effect in introspection mode (the cached answer is never used again) and
in JWT mode (the token verifies but is refused) alike. Entries are forgotten once the tokens
they name have expired; at most MAX_ENTRIES of each kind are kept.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from cachetools import TLRUCache

from mcp_oauth.common.security_events import (
    SESSION_REVOKED,
    SESSIONS_REVOKED,
    TOKEN_HASHES,
    TOKENS_EXPIRE_AT,
)

MAX_ENTRIES = 100_000
DEFAULT_MEMORY = 24 * 3600.0  # seconds an event naming no expiry is remembered


def token_hash(token: str) -> str:
    """The name a revocation event gives a token: its SHA-256, hex (never the token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def event_subject(sub_id: Any) -> tuple[str | None, str | None]:
    """The user (`iss_sub`'s `sub`) and session (`opaque` id) of an RFC 9493 / SSF 1.0 §3.2
    subject identifier, simple or `complex`; None for what it does not name."""
    if not isinstance(sub_id, dict):
        return None, None
    user, session = sub_id, None
    if sub_id.get("format") == "complex":
        user, session = sub_id.get("user") or {}, sub_id.get("session") or {}
    subject = (
        user.get("sub") if isinstance(user, dict) and user.get("format") == "iss_sub" else None
    )
    session_id = session.get("id") if isinstance(session, dict) else None
    return (
        subject if isinstance(subject, str) else None,
        session_id if isinstance(session_id, str) else None,
    )


class Revoked(NamedTuple):
    """What one event revoked: tokens by hash, a grant (family), a user's tokens issued before."""

    hashes: list[str]
    family: str | None
    subject: str | None
    issued_before: float | None


class Revocations:
    """The deny-lists (see the module docstring), filled by `apply`, read by `refusal*`."""

    def __init__(self, clock: Callable[[], float] = time.time, size: int = MAX_ENTRIES):
        def forgotten_at(_key: str, until: float, _now: float) -> float:
            return until

        self._tokens: TLRUCache[str, float] = TLRUCache(size, forgotten_at, timer=clock)
        self._families: TLRUCache[str, float] = TLRUCache(size, forgotten_at, timer=clock)
        self._users: TLRUCache[str, float] = TLRUCache(size, forgotten_at, timer=clock)
        self._users_before: dict[str, float] = {}  # user → tokens issued before this are dead
        self.clock = clock
        self.counters = {"refused_by_event": 0}

    def apply(self, event_type: str, event: Mapping[str, Any], sub_id: Any, toe: float) -> Revoked:
        """Remember what one event (its type, its member of `events`, the SET's `sub_id` and
        time of event) revoked, and say what it was."""
        until = event.get(TOKENS_EXPIRE_AT)
        if not isinstance(until, int | float) or isinstance(until, bool):
            until = self.clock() + DEFAULT_MEMORY
        listed = event.get(TOKEN_HASHES, [])
        hashes = (
            [h.lower() for h in listed if isinstance(h, str)] if isinstance(listed, list) else []
        )
        for hashed in hashes:
            self._tokens[hashed] = max(until, self._tokens.get(hashed, 0))
        user, session = event_subject(sub_id)
        revoked = Revoked(hashes, None, None, None)
        if event_type == SESSION_REVOKED and session:
            self._families[session] = until
            revoked = revoked._replace(family=session)
        if event_type == SESSIONS_REVOKED and user:
            self._users[user] = until
            self._users_before[user] = max(toe, self._users_before.get(user, 0))
            revoked = revoked._replace(subject=user, issued_before=int(toe))
        return revoked

    def refusal(self, hashed: str) -> str | None:
        """Why the token with this SHA-256 is refused, before anything else looks at it."""
        if hashed in self._tokens:
            self.counters["refused_by_event"] += 1
            return "token inactive: the provider revoked it (security event)"
        return None

    def claims_refusal(self, claims: Mapping[str, Any]) -> str | None:
        """Why a token with these (verified) claims is refused: its family or its user's
        tokens were revoked after it was issued."""
        family, user, issued = claims.get("sid"), claims.get("sub"), claims.get("iat")
        if isinstance(family, str) and family in self._families:
            self.counters["refused_by_event"] += 1
            return "token inactive: the provider revoked its grant (security event)"
        if isinstance(user, str) and user in self._users:
            before = self._users_before.get(user, 0)
            if isinstance(issued, int | float) and issued < int(before):
                self.counters["refused_by_event"] += 1
                return (
                    "token inactive: the provider revoked every token of its user (security event)"
                )
        return None

    def metrics(self) -> dict[str, int]:
        for remembered in (self._tokens, self._families, self._users):
            remembered.expire()
        for user in [user for user in self._users_before if user not in self._users]:
            del self._users_before[user]
        return {
            **self.counters,
            "revoked_tokens_remembered": len(self._tokens),
            "revoked_grants_remembered": len(self._families),
            "revoked_users_remembered": len(self._users),
        }
