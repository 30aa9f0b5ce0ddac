"""The random secrets the provider hands out, and the one hash they are stored under.

Codes, tokens, device codes and client secrets are high-entropy random strings, so a fast
SHA-256 hash is enough to store them (nothing to brute-force) and keeps lookups cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_secret() -> str:
    """A 256-bit random value, URL-safe: tokens, codes, client and server secrets."""
    return secrets.token_urlsafe(32)


def secret_hash(value: str) -> str:
    """The only form in which a secret the provider handed out is stored."""
    return hashlib.sha256(value.encode()).hexdigest()


def secret_matches(presented: str, stored_hash: str | None) -> bool:
    """Whether a presented secret is the one stored as `stored_hash`, in constant time."""
    return bool(stored_hash) and hmac.compare_digest(secret_hash(presented), stored_hash)
