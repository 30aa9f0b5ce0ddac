"""Password hashing with argon2id (argon2-cffi), and a verifier that takes as long for an
unknown user as for a wrong password, so the login form does not reveal which accounts exist.

The cost parameters are settings (--argon2-memory-kib, --argon2-time-cost,
--argon2-parallelism) with a floor below which the provider refuses to start. New hashes
(`hash-password`) and the unknown-user dummy hash use them; a stored hash keeps verifying with
the parameters encoded in it, and one made with other parameters is reported at start.
"""

from __future__ import annotations

import getpass
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

REPORT_LOGGER = "oauth_provider.passwords"
log = logging.getLogger(REPORT_LOGGER)


@dataclass(frozen=True)
class Argon2Parameters:
    """argon2id cost: memory in KiB, passes, lanes. The defaults are argon2-cffi's (RFC 9106
    §4, second recommended option: 64 MiB, t=3, p=4), so the hashes made so far match them."""

    memory_kib: int = 65536
    time_cost: int = 3
    parallelism: int = 4

    def hasher(self) -> PasswordHasher:
        return PasswordHasher(
            time_cost=self.time_cost, memory_cost=self.memory_kib, parallelism=self.parallelism
        )

    def describe(self) -> str:
        return f"m={self.memory_kib} KiB, t={self.time_cost}, p={self.parallelism}"


FLOOR = Argon2Parameters(memory_kib=19456, time_cost=2, parallelism=1)
"""The least accepted: OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane), which also sits
above RFC 9106's floor for memory-constrained use."""


def below_floor(parameters: Argon2Parameters) -> str | None:
    """Why `parameters` are refused (one line), or None. RFC 9106 §3.1 also needs at least
    8 KiB of memory per lane."""
    for name, flag in [
        ("memory_kib", "--argon2-memory-kib"),
        ("time_cost", "--argon2-time-cost"),
        ("parallelism", "--argon2-parallelism"),
    ]:
        value, least = getattr(parameters, name), getattr(FLOOR, name)
        if value < least:
            return (
                f"{flag} {value} is below the floor of {least} "
                f"(argon2id minimum {FLOOR.describe()}, RFC 9106 / OWASP)"
            )
    if parameters.memory_kib < 8 * parameters.parallelism:
        return "--argon2-memory-kib must be at least 8 KiB per lane (RFC 9106 §3.1)"
    return None


_DUMMY_PASSWORD = "no such user: spend the same time as a real check"


class _Hashing:
    """The hasher in use and its dummy hash (made once per parameter set, not per sign-in)."""

    def __init__(self, parameters: Argon2Parameters):
        self.parameters = parameters
        self.hasher = parameters.hasher()
        self.dummy_hash = self.hasher.hash(_DUMMY_PASSWORD)


_current: _Hashing | None = None


def _hashing() -> _Hashing:
    global _current
    if _current is None:
        _current = _Hashing(Argon2Parameters())
    return _current


def use_parameters(parameters: Argon2Parameters) -> None:
    """Hash (and time unknown users) with `parameters` from now on; refused below the floor."""
    global _current
    reason = below_floor(parameters)
    if reason:
        raise ValueError(reason)
    if _current is None or _current.parameters != parameters:
        _current = _Hashing(parameters)


def hash_password(password: str) -> str:
    return _hashing().hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True only when password_hash is set and matches; always runs one argon2 verification."""
    hashing = _hashing()
    try:
        return (
            hashing.hasher.verify(password_hash or hashing.dummy_hash, password)
            and password_hash is not None
        )
    except (VerificationError, InvalidHashError):
        return False


def hash_parameters(password_hash: str) -> Argon2Parameters | None:
    """The parameters encoded in a stored hash, or None if it is not a readable argon2 hash."""
    try:
        found = extract_parameters(password_hash)
    except InvalidHashError:
        return None
    return Argon2Parameters(found.memory_cost, found.time_cost, found.parallelism)


def stale_hashes(hashes: Mapping[str, str]) -> dict[str, str]:
    """{username: why} for stored hashes made with other parameters than the configured ones
    (argon2's check_needs_rehash): they still verify, but their sign-ins cost a different time
    than an unknown user's, which uses the configured parameters."""
    hashing = _hashing()
    stale = {}
    for username, password_hash in hashes.items():
        try:
            needs = hashing.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            needs = True
        if needs:
            found = hash_parameters(password_hash)
            stale[username] = found.describe() if found else "not an argon2id hash"
    return stale


def report_stale_hashes(hashes: Mapping[str, str]) -> None:
    """One warning at start naming the accounts to re-hash with `hash-password`."""
    stale = stale_hashes(hashes)
    if stale:
        listed = ", ".join(f"{name} ({why})" for name, why in sorted(stale.items()))
        log.warning(
            "password hashes made with other argon2 parameters than %s: %s; they verify, but "
            "re-hash them with `oauth_provider.py hash-password` so that every sign-in costs "
            "the same as an unknown user's",
            hashing_parameters().describe(),
            listed,
        )


def hashing_parameters() -> Argon2Parameters:
    return _hashing().parameters


def unknown_user_hash() -> str:
    """The hash an unknown username is checked against (made with the configured parameters)."""
    return _hashing().dummy_hash


def print_password_hash(parameters: Argon2Parameters | None = None) -> None:
    """`oauth_provider.py hash-password [--argon2-… flags]`: ask twice, print the hash to
    paste into users.yaml."""
    if parameters is not None:
        use_parameters(parameters)
    password = getpass.getpass("New password: ")
    if password != getpass.getpass("Again: "):
        sys.exit("error: the two passwords differ; nothing printed")
    print(hash_password(password))
