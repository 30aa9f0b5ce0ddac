"""The two caches of the resource server (introspection answers, exchanged tokens) share one
shape: entries keyed by a SHA-256, each living its own lifetime."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from cachetools import TLRUCache


class HasLifetime(Protocol):
    @property
    def lifetime(self) -> float: ...


E = TypeVar("E", bound=HasLifetime)


def hashed_key(*parts: str) -> bytes:
    """The cache's name for what `parts` identify (a token; a user, scopes and audience): their
    SHA-256, so neither a memory dump nor a debug print of a cache yields a usable credential."""
    return hashlib.sha256("\0".join(parts).encode()).digest()


def lifetime_cache(size: int, clock: Callable[[], float] = time.monotonic) -> TLRUCache[bytes, E]:
    """At most `size` entries, each dropped `entry.lifetime` seconds after it was stored."""
    return TLRUCache(size, ttu=lambda _key, entry, now: now + entry.lifetime, timer=clock)
