"""Which key checks a signature, and with which algorithm: one rule for JWT access tokens and
signed introspection answers alike, so algorithm confusion cannot happen in either.

- Only asymmetric algorithms (RFC 7518 §3.3-3.5, RFC 8037, RFC 9864): never `none`, never
  HMAC, whose "secret" would be the provider's public key, known to everyone (RFC 8725 §2.1).
- Each algorithm is bound to the key type it needs (RFC 7518 §6: `kty`, and for EC and OKP
  the `crv`): an RS384 header cannot be checked with an EC key, nor ES256 with a P-384 key.
- An algorithm must be declared by the provider: the key's own `alg` when the key set names
  one (RFC 7517 §4.4), else the provider metadata's signing algorithms, else RS256/ES256 (the
  defaults of OpenID Connect and RFC 7518); a key meant for encryption (`use` enc) never checks
  a signature (RFC 7517 §4.2).
- The key is picked by the header's `kid`; with no `kid`, only a key set of one key will do.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from joserfc import errors, jws, jwt
from joserfc.jwk import Key as JoseKey
from joserfc.jwk import KeySet

KEY_TYPES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    **{f"RS{bits}": ("RSA", None) for bits in (256, 384, 512)},
    **{f"PS{bits}": ("RSA", None) for bits in (256, 384, 512)},
    "ES256": ("EC", ("P-256",)),
    "ES384": ("EC", ("P-384",)),
    "ES512": ("EC", ("P-521",)),
    "EdDSA": ("OKP", ("Ed25519", "Ed448")),
    "Ed25519": ("OKP", ("Ed25519",)),
    "Ed448": ("OKP", ("Ed448",)),
}
"""Every algorithm accepted, and the key type (`kty`, `crv`) each one needs."""

ASYMMETRIC = tuple(KEY_TYPES)
DEFAULT_ALGORITHMS = frozenset({"RS256", "ES256"})
SIGNING_METADATA = (
    "id_token_signing_alg_values_supported",
    "introspection_signing_alg_values_supported",
    "userinfo_signing_alg_values_supported",
    "authorization_signing_alg_values_supported",
)
"""Metadata that states what the provider itself signs with (OpenID Discovery §3, RFC 9701
§6, JARM); what it accepts from clients (request objects, client assertions) says nothing."""


class SignatureRefused(Exception):
    """A JWS this server does not accept; the message says why."""


def declared_algorithms(document: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The asymmetric algorithms a metadata document (RFC 8414 §2, OpenID Discovery §3) says
    the provider signs with; None when it says nothing."""
    if not document:
        return None
    named: set[str] = set()
    for field in SIGNING_METADATA:
        values = document.get(field)
        if isinstance(values, list):
            named.update(v for v in values if isinstance(v, str))
    return frozenset(named & KEY_TYPES.keys()) or None


def algorithm_refusal(alg: object, what: str = "token") -> str | None:
    """Why a JWS header's `alg` is never accepted (RFC 8725 §2.1, §3.1); None if it may be."""
    if alg not in KEY_TYPES:
        return f"{what} algorithm {alg!r} is not allowed (only RSA, ECDSA or EdDSA signatures)"
    return None


def key_refusal(
    alg: str, key: Mapping[str, Any], declared: Iterable[str] | None, what: str = "token"
) -> str | None:
    """Why `key` (its public JWK members) may not check an `alg` signature (RFC 7518 §6,
    RFC 7517 §4.2 and §4.4); None if it may."""
    kty, curves = KEY_TYPES[alg]
    if key.get("kty") != kty or (curves is not None and key.get("crv") not in curves):
        shown = "/".join(str(key[m]) for m in ("kty", "crv") if m in key)
        return f"{what} algorithm {alg} does not fit key {key.get('kid')!r} ({shown})"
    if key.get("use", "sig") != "sig":
        return f"{what} key {key.get('kid')!r} is not a signing key (use {key.get('use')!r})"
    allowed = {key["alg"]} if "alg" in key else set(declared or DEFAULT_ALGORITHMS)
    if alg not in allowed:
        declared_here = ", ".join(sorted(allowed))
        return (
            f"{what} algorithm {alg} is not declared for key {key.get('kid')!r} ({declared_here})"
        )
    return None


def signing_key(keys: KeySet, kid: str | None, where: str, what: str = "token") -> JoseKey:
    """The key named by `kid` in the key set at `where`; with no `kid`, its only key."""
    if kid is None:
        if len(keys.keys) != 1:
            raise SignatureRefused(f"{what} has no kid and {where} has several keys")
        return keys.keys[0]
    for key in keys:
        if key.kid == kid:
            return key
    raise SignatureRefused(f"{what} key id {kid!r} is not in {where}")


def protected_header(compact: str, what: str = "token") -> dict[str, Any]:
    """The header of a compact JWS, unverified (to pick the key); SignatureRefused if none."""
    try:
        return dict(jws.extract_compact(compact.encode()).headers())
    except (errors.JoseError, ValueError, TypeError):
        raise SignatureRefused(f"{what} is not a signed JWT") from None


def verified_claims(
    compact: str,
    header: Mapping[str, Any],
    keys: KeySet,
    *,
    where: str,
    declared: Iterable[str] | None,
    what: str = "token",
) -> dict[str, Any]:
    """The claims of a compact JWS whose signature, algorithm and key all pass the rules
    above; SignatureRefused (saying why) otherwise. Times and names are the caller's."""
    alg = header.get("alg")
    if reason := algorithm_refusal(alg, what):
        raise SignatureRefused(reason)
    assert isinstance(alg, str)
    kid = header.get("kid")
    key = signing_key(keys, kid if isinstance(kid, str) else None, where, what)
    if reason := key_refusal(alg, key.as_dict(private=False), declared, what):
        raise SignatureRefused(reason)
    try:
        with warnings.catch_warnings():
            # RFC 9864 renames EdDSA as Ed25519/Ed448 and joserfc warns at each use of the old
            # name; yet providers publish EdDSA keys, and key_refusal has pinned the curve.
            warnings.filterwarnings("ignore", "EdDSA is deprecated", errors.SecurityWarning)
            claims = jwt.decode(compact, key, algorithms=[alg]).claims
    except errors.BadSignatureError:
        raise SignatureRefused(f"signature does not match any key in {where}") from None
    except (errors.JoseError, ValueError, TypeError) as exc:
        raise SignatureRefused(f"{what} is not a valid JWT ({exc})") from None
    if not isinstance(claims, dict):
        raise SignatureRefused(f"{what} claims are not a JSON object")
    return claims
