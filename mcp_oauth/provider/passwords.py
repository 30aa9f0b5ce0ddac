"""Password hashing with argon2id (argon2-cffi), and a verifier that takes as long for an
unknown user as for a wrong password, so the login form does not reveal which accounts exist."""

from __future__ import annotations

import getpass
import sys

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verified against when the username is unknown, to spend the same time as a real check.
_DUMMY_HASH = _hasher.hash("no such user: spend the same time as a real check")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True only when password_hash is set and matches; always runs one argon2 verification."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def print_password_hash() -> None:
    """`oauth_provider.py hash-password`: ask twice, print the hash to paste into users.yaml."""
    password = getpass.getpass("New password: ")
    if password != getpass.getpass("Again: "):
        sys.exit("error: the two passwords differ; nothing printed")
    print(hash_password(password))
