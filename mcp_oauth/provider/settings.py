"""The provider's settings: command-line flags, each with an environment variable as its default.

The flags are the provider's contract (../shared/design.md lists them); oauth_provider.py reads
them once at start.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mcp_oauth.provider.passwords import Argon2Parameters, below_floor

ROOT = Path(__file__).resolve().parents[2]
"""The repository: where users.yaml and data/ are by default."""


def parse_settings(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description="OAuth 2.0 authorization server for the MCP resource server.",
        epilog="Subcommand: 'hash-password' prints an argon2 hash to paste into users.yaml.",
    )
    parser.add_argument(
        "--host",
        default=env("OAUTH_HOST", "localhost"),
        help="interface to listen on (env OAUTH_HOST; default localhost)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env("OAUTH_PORT", "9000")),
        help="port to listen on (env OAUTH_PORT; default 9000)",
    )
    parser.add_argument(
        "--issuer",
        default=env("OAUTH_ISSUER"),
        help="issuer URL exactly as clients must see it, no trailing slash "
        "(env OAUTH_ISSUER; default http://localhost:<port>)",
    )
    parser.add_argument(
        "--database-url",
        default=env("OAUTH_DATABASE_URL"),
        help="SQLAlchemy URL: sqlite:///path.db (default data/oauth.db) or "
        "postgresql+psycopg://… to share state between replicas "
        "(env OAUTH_DATABASE_URL)",
    )
    parser.add_argument(
        "--users",
        type=Path,
        default=Path(env("OAUTH_USERS_FILE", ROOT / "users.yaml")),
        help="accounts, clients and resources (env OAUTH_USERS_FILE; default users.yaml)",
    )
    parser.add_argument(
        "--resource",
        action="append",
        default=[],
        help="another resource URI (RFC 8707) tokens may be issued for; "
        "repeatable (env OAUTH_RESOURCES, comma separated)",
    )
    parser.add_argument(
        "--access-token-ttl",
        type=int,
        default=int(env("OAUTH_ACCESS_TOKEN_TTL", "3600")),
        help="access token lifetime in seconds (env OAUTH_ACCESS_TOKEN_TTL; default 3600)",
    )
    parser.add_argument(
        "--refresh-token-ttl",
        type=int,
        default=int(env("OAUTH_REFRESH_TOKEN_TTL", str(30 * 24 * 3600))),
        help="refresh token lifetime in seconds (env OAUTH_REFRESH_TOKEN_TTL; default 30 days)",
    )
    parser.add_argument(
        "--access-token-format",
        choices=["opaque", "jwt"],
        default=env("OAUTH_ACCESS_TOKEN_FORMAT", "opaque"),
        help="opaque random tokens, or RFC 9068 JWTs signed with the key at "
        "/jwks.json (env OAUTH_ACCESS_TOKEN_FORMAT; default opaque)",
    )
    for flag, env_name, default, meaning in [
        ("--refresh-grace-seconds", "OAUTH_REFRESH_GRACE_SECONDS", 30,
         "how long a client may retry a refresh whose answer it lost and get the same "
         "tokens (0: never; a second use is then always a replay)"),
        ("--registrations-per-hour", "OAUTH_REGISTRATIONS_PER_HOUR", 20,
         "registrations per client address and hour (0: no limit)"),
        ("--janitor-interval-seconds", "OAUTH_JANITOR_INTERVAL_SECONDS", 600,
         "how often expired rows are deleted (0: never)"),
        ("--retention-seconds", "OAUTH_RETENTION_SECONDS", 24 * 3600,
         "how long expired tokens (and the used codes that bought them) are kept"),
        ("--unused-client-seconds", "OAUTH_UNUSED_CLIENT_SECONDS", 24 * 3600,
         "age at which a self-registered client without tokens is deleted"),
    ]:  # fmt: skip
        parser.add_argument(
            flag,
            type=int,
            default=int(env(env_name, str(default))),
            help=f"{meaning} (env {env_name}; default {default})",
        )
    defaults = Argon2Parameters()
    for flag, env_name, default, meaning in [
        ("--argon2-memory-kib", "OAUTH_ARGON2_MEMORY_KIB", defaults.memory_kib,
         "argon2id memory per password hash, KiB (at least 19456)"),
        ("--argon2-time-cost", "OAUTH_ARGON2_TIME_COST", defaults.time_cost,
         "argon2id passes (at least 2)"),
        ("--argon2-parallelism", "OAUTH_ARGON2_PARALLELISM", defaults.parallelism,
         "argon2id lanes (at least 1)"),
        ("--workers", "OAUTH_WORKERS", 1,
         "worker processes sharing the port and the database (scale up before replicas)"),
    ]:  # fmt: skip
        parser.add_argument(
            flag,
            type=int,
            default=int(env(env_name, str(default))),
            help=f"{meaning} (env {env_name}; default {default})",
        )
    parser.add_argument(
        "--cimd-allow-loopback",
        action="store_true",
        default=env("OAUTH_CIMD_ALLOW_LOOPBACK", "") in ("1", "true", "yes"),
        help="DEVELOPMENT ONLY: let a client_id metadata document live on a loopback address, "
        "over plain http too (env OAUTH_CIMD_ALLOW_LOOPBACK=1; default off)",
    )
    parser.add_argument(
        "--log-level",
        default=env("OAUTH_LOG_LEVEL", "info"),
        help="debug, info, warning (env OAUTH_LOG_LEVEL; default info)",
    )
    settings = parser.parse_args(argv)
    settings.argon2 = Argon2Parameters(
        settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism
    )
    # Refused at start, in one line: a weaker hash than the floor is never made or timed.
    reason = below_floor(settings.argon2)
    if reason:
        parser.exit(2, f"error: {reason}\n")
    if settings.workers < 1:
        parser.exit(2, f"error: --workers must be at least 1 (got {settings.workers})\n")
    settings.issuer = (settings.issuer or f"http://localhost:{settings.port}").rstrip("/")
    settings.database_url = settings.database_url or f"sqlite:///{ROOT / 'data' / 'oauth.db'}"
    settings.resource += [uri for uri in env("OAUTH_RESOURCES", "").split(",") if uri.strip()]
    return settings
