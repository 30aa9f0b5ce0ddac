"""What a JWT access token must show to be accepted, each rule a small pure check.

- `alg` asymmetric only, declared by the provider and fitting its key (jws_algorithms.py: never
  `none` or HS*, so a public key cannot become an HMAC secret); `typ` at+jwt (RFC 9068), or
  Entra's plain `JWT` in Entra mode, so an ID token cannot pass.
- `exp` in the future and `nbf`/`iat` not in the future, with a small leeway for clock skew.
- `iss` and `aud` as `Expectations` says (checked by verified_token.claims_refusal).
- Scopes from `scope` or `scp` (space separated) and `roles` (Entra app-only tokens).
Each refusal is a short reason naming what is wrong; it may quote the (untrusted) token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mcp_oauth.resource_server.jws_algorithms import algorithm_refusal, declared_algorithms


@dataclass(frozen=True)
class Expectations:
    """What a token must say to be for this server: who may issue it and whom it must name."""

    issuers: tuple[str, ...]
    audiences: tuple[str, ...]
    entra: bool = False
    algorithms: frozenset[str] | None = None
    """What the provider's metadata says it signs with, for keys that name no `alg`."""

    @classmethod
    def for_provider(
        cls, issuer: str, resource_url: str, document: Mapping[str, Any] | None = None
    ) -> Expectations:
        """Tokens of `issuer` for `resource_url`, signed as its metadata `document` declares."""
        return cls(
            issuers=(issuer,),
            audiences=(resource_url,),
            algorithms=declared_algorithms(document),
        )


def _when(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):  # a date no calendar holds
        return str(timestamp)


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def header_refusal(header: Mapping[str, Any], *, entra: bool) -> str | None:
    """Why a JWS header is not that of an access token we accept (RFC 9068 §2.1, RFC 8725
    §3.1); None if it is."""
    if reason := algorithm_refusal(header.get("alg")):
        return reason
    typ = str(header.get("typ", "")).lower().removeprefix("application/")
    allowed = ("at+jwt", "jwt") if entra else ("at+jwt",)
    if typ not in allowed:
        return f"token typ {header.get('typ')!r} is not {' or '.join(allowed)} (RFC 9068)"
    return None


def time_refusal(claims: Mapping[str, Any], *, now: float, leeway: float) -> str | None:
    """Why the token is not valid at `now` ± leeway (RFC 7519 §4.1.4-6); None if it is.
    `exp` is required (RFC 9068 §2.2)."""
    exp = claims.get("exp")
    if not _numeric(exp):
        return "token has no numeric exp claim"
    if exp <= now - leeway:
        return f"token expired at {_when(exp)}"
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not _numeric(value):
            return f"token {name} claim is not a number"
        if value > now + leeway:
            return f"token is not valid before {_when(value)} ({name})"
    return None


def _words(value: object) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def scopes_of(claims: Mapping[str, Any]) -> list[str]:
    """Granted scopes (RFC 9068 §2.2.3): `scope` or `scp` (a space-separated string, or a
    list) plus `roles`."""
    names = ("scope", "scp", "roles")
    return list(dict.fromkeys(word for name in names for word in _words(claims.get(name))))
