"""The caches of the resource server (introspection answers, exchanged tokens) share one shape:
entries keyed by a SHA-256, each living its own lifetime. `IndexedAnswers` (the longer-lived
answers kept while revocation events arrive) can also drop every answer of a grant or a user."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol, TypeVar

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


class _Answer(NamedTuple):
    value: Any
    lifetime: float
    family: str | None
    subject: str | None
    issued_at: float | None


class IndexedAnswers:
    """Accepted answers by the token's SHA-256 (hex), also indexed by grant (`sid`) and
    subject, so a revocation event evicts every answer it concerns in one step. The indexes
    may name answers already gone (expired or pushed out); they are rebuilt when they grow to
    twice the cache."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic):
        self._answers: TLRUCache[str, _Answer] = lifetime_cache(size, clock)
        self._by_family: dict[str, set[str]] = {}
        self._by_subject: dict[str, set[str]] = {}
        self._indexed = 0
        self.evicted = 0

    def __len__(self) -> int:
        self._answers.expire()
        return len(self._answers)

    def get(self, hashed: str) -> Any:
        answer = self._answers.get(hashed)
        return None if answer is None else answer.value

    def put(self, hashed: str, value: Any, lifetime: float, claims: dict[str, Any]) -> None:
        if lifetime <= 0:
            return
        family, subject, issued = claims.get("sid"), claims.get("sub"), claims.get("iat")
        family = family if isinstance(family, str) else None
        subject = subject if isinstance(subject, str) else None
        issued = issued if isinstance(issued, int | float) else None
        self._answers[hashed] = answer = _Answer(value, lifetime, family, subject, issued)
        self._index(hashed, answer)
        if self._indexed > 2 * max(len(self._answers), 1000):
            self._reindex()

    def evict(
        self,
        hashes: Iterable[str] = (),
        *,
        family: str | None = None,
        subject: str | None = None,
        issued_before: float | None = None,
    ) -> int:
        """Drop the answers for `hashes`, of `family`, and of `subject` issued before
        `issued_before` (all of them when None); how many were dropped."""
        doomed = set(hashes)
        if family is not None:
            doomed |= self._by_family.pop(family, set())
        if subject is not None:
            for hashed in list(self._by_subject.get(subject, ())):
                answer = self._answers.get(hashed)
                issued = None if answer is None else answer.issued_at
                if issued_before is None or issued is None or issued < issued_before:
                    doomed.add(hashed)
        dropped = sum(self._answers.pop(hashed, None) is not None for hashed in doomed)
        self.evicted += dropped
        return dropped

    def clear(self) -> None:
        self._answers.clear()
        self._by_family.clear()
        self._by_subject.clear()
        self._indexed = 0

    def _reindex(self) -> None:
        self._answers.expire()
        self._by_family.clear()
        self._by_subject.clear()
        self._indexed = 0
        for hashed, answer in self._answers.items():
            self._index(hashed, answer)

    def _index(self, hashed: str, answer: _Answer) -> None:
        for index, name in ((self._by_family, answer.family), (self._by_subject, answer.subject)):
            if name is not None:
                index.setdefault(name, set()).add(hashed)
                self._indexed += 1
