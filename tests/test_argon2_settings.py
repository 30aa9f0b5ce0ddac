"""argon2id parameters are settings with a floor (RFC 9106, OWASP: 19 MiB, t=2, p=1): the
provider refuses to start below it, hashes new passwords and times unknown users with what
is configured, and still verifies (and reports) hashes made with other parameters."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from argon2 import PasswordHasher, extract_parameters

from mcp_oauth.provider import passwords
from mcp_oauth.provider.passwords import Argon2Parameters
from mcp_oauth.provider.settings import parse_settings
from tests.conftest import start_provider
from tests.oauth_helpers import Browser
from tests.support import ROOT

FLOOR_ARGS = ["--argon2-memory-kib", "19456", "--argon2-time-cost", "2",
              "--argon2-parallelism", "1"]  # fmt: skip


def run_provider(args: list[str], env: dict[str, str] | None = None, stdin: str = ""):
    return subprocess.run(
        [sys.executable, "oauth_provider.py", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args, env, flag",
    [
        (["--argon2-memory-kib", "19455"], {}, "--argon2-memory-kib 19455"),
        (["--argon2-time-cost", "1"], {}, "--argon2-time-cost 1"),
        (["--argon2-parallelism", "0"], {}, "--argon2-parallelism 0"),
        ([], {"OAUTH_ARGON2_MEMORY_KIB": "4096"}, "--argon2-memory-kib 4096"),
        ([], {"OAUTH_ARGON2_TIME_COST": "1"}, "--argon2-time-cost 1"),
    ],
)
def test_parameters_below_the_floor_are_refused_at_start_in_one_line(args, env, flag):
    # A users file that does not exist: without the floor check it would stop at once, rc 1.
    done = run_provider(["--users", "/nonexistent/users.yaml", *args], env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} is below the floor")
    assert "Traceback" not in done.stderr


def test_the_floor_itself_is_accepted():
    assert parse_settings(FLOOR_ARGS).argon2 == passwords.FLOOR
    assert parse_settings([]).argon2 == Argon2Parameters(65536, 3, 4)


@pytest.fixture
def floor_parameters() -> Iterator[Argon2Parameters]:
    passwords.use_parameters(passwords.FLOOR)
    yield passwords.FLOOR
    passwords.use_parameters(Argon2Parameters())


def encoded(password_hash: str) -> Argon2Parameters:
    found = extract_parameters(password_hash)
    return Argon2Parameters(found.memory_cost, found.time_cost, found.parallelism)


def test_new_hashes_and_the_unknown_user_hash_use_the_configured_parameters(floor_parameters):
    assert encoded(passwords.hash_password("correct horse")) == floor_parameters
    # An unknown user is checked against a hash of the same cost as a new account's.
    assert encoded(passwords.unknown_user_hash()) == floor_parameters
    assert passwords.verify_password(None, "anything") is False


def test_hashes_made_with_other_parameters_still_verify_and_are_reported(floor_parameters):
    old = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4).hash("password123")
    current = passwords.hash_password("secret456")
    assert passwords.verify_password(old, "password123") is True
    assert passwords.verify_password(old, "wrong") is False
    assert passwords.stale_hashes({"alice": old, "bob": current}) == {
        "alice": "m=65536 KiB, t=3, p=4"
    }


def test_hash_password_uses_the_flags():
    done = run_provider(["hash-password", *FLOOR_ARGS], stdin="pa55word\npa55word\n")
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip().splitlines()[-1]
    assert encoded(printed) == passwords.FLOOR
    assert PasswordHasher().verify(printed, "pa55word")


def test_a_provider_at_the_floor_signs_in_users_hashed_otherwise_and_says_so(tmp_path):
    provider = start_provider(tmp_path, args=FLOOR_ARGS)
    try:
        signed_in = Browser(provider.url).sign_in("alice", "password123")
        assert signed_in.status_code in (302, 303), signed_in.text[:300]
        wrong = Browser(provider.url).sign_in("alice", "not her password")
        assert wrong.status_code == 401
        log = provider.process.output()
        assert "other argon2 parameters than m=19456 KiB, t=2, p=1" in log
        assert "alice (m=65536 KiB, t=3, p=4)" in log
    finally:
        provider.process.stop()
