"""Which algorithms and keys check a JWT's signature (resource_server.jws_algorithms): every
asymmetric algorithm a provider declares, each bound to its key's type; never `none` or HMAC,
and no algorithm confusion. Real signatures (joserfc), no network; the same rules serve JWT
access tokens (jwt_verifier.py) and signed introspection answers (signed_introspection.py),
and the JwtVerifier is checked end to end over HTTP at the bottom."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, OKPKey, RSAKey

from mcp_oauth.resource_server.jws_algorithms import (
    SignatureRefused,
    declared_algorithms,
    protected_header,
    verified_claims,
)
from mcp_oauth.resource_server.jwt_claims import Expectations
from mcp_oauth.resource_server.jwt_verifier import JwtVerifier
from mcp_oauth.resource_server.key_set import KeySetCache

pytest.register_assert_rewrite("tests.peer_fixtures")
from tests.peer_fixtures import EntraServer  # noqa: E402

pytest_plugins = ["tests.peer_fixtures"]

# Signing with EdDSA here warns (RFC 9864 renames it); verifying does not (jws_algorithms).
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated:joserfc.errors.SecurityWarning")

CLAIMS = {"iss": "http://as", "sub": "alice", "scope": "read"}
WHERE = "http://as/jwks"
RSA_PRIVATE = RSAKey.generate_key(2048, private=True)
"""One RSA key pair for every RSA case (generating one costs ~0.1 s)."""


def key_for(algorithm: str, kid: str, **members: str) -> Any:
    """A private key of the type `algorithm` needs, with `kid` and any other JWK members."""
    params = {"kid": kid, "use": "sig", **members}
    if algorithm.startswith(("RS", "PS")):
        return RSAKey.import_key({**RSA_PRIVATE.as_dict(private=True), **params})
    if algorithm.startswith("ES"):
        curve = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[algorithm]
        return ECKey.generate_key(curve, params, private=True)
    curve = "Ed448" if algorithm == "Ed448" else "Ed25519"
    return OKPKey.generate_key(curve, params, private=True)


def public(*keys: Any) -> KeySet:
    """The key set as a provider publishes it: public members only."""
    return KeySet.import_key_set({"keys": [k.as_dict(private=False) for k in keys]})


def sign(alg: str, key: Any, kid: str | None = None) -> str:
    """A real signature by `key` under `alg`, whatever the key's own alg/use members say (an
    attacker's signer is not bound by them; the verifier must be)."""
    header = {"alg": alg, "typ": "at+jwt", **({"kid": kid} if kid else {})}
    unbound = {k: v for k, v in key.as_dict(private=True).items() if k not in ("alg", "use")}
    return jwt.encode(header, CLAIMS, type(key).import_key(unbound), algorithms=[alg])


def hmac_signed(alg: str, secret: bytes, kid: str) -> str:
    """An HMAC JWS made by hand, as an attacker would (joserfc refuses to make some of them)."""
    signing_input = f"{b64({'alg': alg, 'typ': 'at+jwt', 'kid': kid})}.{b64(CLAIMS)}"
    digest = getattr(hashlib, f"sha{alg[2:]}")
    mac = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(mac)}"


def check(token: str, keys: KeySet, declared: frozenset[str] | None = None) -> dict[str, Any]:
    return verified_claims(token, protected_header(token), keys, where=WHERE, declared=declared)


def refusal(token: str, keys: KeySet, declared: frozenset[str] | None = None) -> str:
    with pytest.raises(SignatureRefused) as refused:
        check(token, keys, declared)
    return str(refused.value)


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


ASYMMETRIC = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "Ed25519", "Ed448",
]  # fmt: skip


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_each_asymmetric_algorithm_its_key_declares_is_accepted(alg: str):
    key = key_for(alg, "k1", alg=alg)
    assert check(sign(alg, key, "k1"), public(key)) == CLAIMS


@pytest.mark.parametrize("alg", ["RS384", "PS512", "ES384", "EdDSA"])
def test_an_algorithm_the_metadata_declares_is_accepted_for_a_key_without_alg(alg: str):
    key = key_for(alg, "k1")
    token = sign(alg, key, "k1")
    assert check(token, public(key), declared=frozenset({alg})) == CLAIMS
    # Declared by nobody: only the defaults (RS256, ES256) would do for such a key.
    assert "is not declared for key 'k1' (ES256, RS256)" in refusal(token, public(key))


def test_none_is_refused_however_spelled():
    key = key_for("RS256", "k1", alg="RS256")
    for alg in ("none", "None", "NONE", None, ""):
        header = {"typ": "at+jwt", "kid": "k1", **({"alg": alg} if alg is not None else {})}
        unsigned = f"{b64(header)}.{b64(CLAIMS)}."
        why = refusal(unsigned, public(key))
        # A header without alg is no JWS at all (RFC 7515 §4.1.1).
        expected = f"token algorithm {alg!r}" if alg is not None else "token is not a signed JWT"
        assert why.startswith(expected), why


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_is_refused_even_with_a_shared_secret_key_published(alg: str):
    secret = OctKey.import_key(b"a-shared-secret-that-must-never-work!", {"kid": "k1"})
    token = hmac_signed(alg, b"a-shared-secret-that-must-never-work!", "k1")
    keys = KeySet.import_key_set({"keys": [secret.as_dict(private=True)]})
    assert refusal(token, keys).startswith(f"token algorithm '{alg}' is not allowed")


def test_the_rsa_public_key_as_an_hmac_secret_is_refused():
    """The classic confusion: an attacker signs HS256 with the provider's public key (which
    everyone knows) as the secret, hoping the verifier hands that key to HMAC."""
    rsa = key_for("RS256", "k1", alg="RS256")
    for secret in (json.dumps(rsa.as_dict(private=False)).encode(), rsa.as_pem(private=False)):
        forged = hmac_signed("HS256", secret, "k1")
        assert refusal(forged, public(rsa)) == (
            "token algorithm 'HS256' is not allowed (only RSA, ECDSA or EdDSA signatures)"
        )


@pytest.mark.parametrize(
    ("alg", "key_alg", "shown"),
    [
        ("ES256", "RS256", "RSA"),  # an EC algorithm named against an RSA key
        ("RS256", "ES256", "EC/P-256"),  # and the other way round
        ("ES384", "ES256", "EC/P-256"),  # the right family, the wrong curve
        ("EdDSA", "RS256", "RSA"),
        ("PS256", "EdDSA", "OKP/Ed25519"),
        ("Ed448", "Ed25519", "OKP/Ed25519"),
    ],
)
def test_an_algorithm_that_does_not_fit_the_keys_type_is_refused(alg, key_alg, shown):
    victim = key_for(key_alg, "k1")  # no alg member: only its type can refuse the mismatch
    signer = key_for(alg, "k1")
    token = sign(alg, signer, "k1")
    everything = frozenset(ASYMMETRIC)
    assert refusal(token, public(victim), declared=everything) == (
        f"token algorithm {alg} does not fit key 'k1' ({shown})"
    )


def test_a_header_alg_the_key_does_not_declare_is_refused():
    """RS384 with the very key the provider declared for RS256: a valid signature, yet not an
    algorithm the provider said it uses (RFC 7517 §4.4)."""
    key = key_for("RS256", "k1", alg="RS256")
    token = sign("RS384", key, "k1")
    assert refusal(token, public(key), declared=frozenset(ASYMMETRIC)) == (
        "token algorithm RS384 is not declared for key 'k1' (RS256)"
    )
    bare = key_for("RS256", "k2")  # no alg member: the metadata's list decides
    ps256 = sign("PS256", bare, "k2")
    assert refusal(ps256, public(bare), declared=frozenset({"RS256"})) == (
        "token algorithm PS256 is not declared for key 'k2' (RS256)"
    )


def test_an_encryption_key_never_checks_a_signature():
    key = key_for("RS256", "k1", alg="RS256", use="enc")
    assert refusal(sign("RS256", key, "k1"), public(key)) == (
        "token key 'k1' is not a signing key (use 'enc')"
    )


def test_the_key_is_picked_by_kid_never_tried_in_turn():
    first, second = key_for("ES256", "a", alg="ES256"), key_for("ES256", "b", alg="ES256")
    keys = public(first, second)
    assert check(sign("ES256", second, "b"), keys) == CLAIMS
    assert refusal(sign("ES256", second, "a"), keys) == (
        f"signature does not match any key in {WHERE}"
    )
    assert refusal(sign("ES256", second), keys) == f"token has no kid and {WHERE} has several keys"
    assert refusal(sign("ES256", second, "c"), keys) == f"token key id 'c' is not in {WHERE}"
    assert check(sign("ES256", second), public(second)) == CLAIMS  # the only key


def test_declared_algorithms_come_from_what_the_provider_signs_with():
    glewlwyd = {
        "id_token_signing_alg_values_supported": ["RS256", "RS384", "PS256"],
        "introspection_signing_alg_values_supported": ["HS256", "ES384", "EdDSA"],
        "request_object_signing_alg_values_supported": ["ES512", "none"],  # what it accepts
    }
    assert declared_algorithms(glewlwyd) == {"RS256", "RS384", "PS256", "ES384", "EdDSA"}
    assert declared_algorithms({"id_token_signing_alg_values_supported": ["HS256"]}) is None
    assert declared_algorithms({"issuer": "http://as"}) is None
    assert declared_algorithms(None) is None
    assert Expectations.for_provider("http://as", "http://rs", glewlwyd).algorithms == {
        "RS256", "RS384", "PS256", "ES384", "EdDSA",
    }  # fmt: skip


# -- end to end: the JwtVerifier against a key set served over HTTP ------------------------------


def entra_signed(alg: str, key: Any, claims: dict[str, Any]) -> str:
    unbound = {k: v for k, v in key.as_dict(private=True).items() if k not in ("alg", "use")}
    header = {"alg": alg, "typ": "JWT", "kid": key.kid}
    return jwt.encode(header, claims, type(key).import_key(unbound), algorithms=[alg])


def test_jwt_verifier_accepts_a_declared_rs384_and_refuses_confusion(entra: EntraServer):
    """The key set is served by the Entra imitation's JWKS endpoint (real HTTP); the tokens
    are Entra-shaped but signed here with keys published beside its own."""
    f = entra.factory
    claims = f.user_claims("2.0", scp="read")
    rs384 = key_for("RS384", "rs384", alg="RS384")
    p384 = key_for("ES384", "p384")  # no alg member
    f.keys.extend([rs384, p384])  # type: ignore[list-item]
    tokens = {
        "rs384": entra_signed("RS384", rs384, claims),
        "es384": entra_signed("ES384", p384, claims),
        "rs512": entra_signed("RS512", rs384, claims),
        "hs256": hmac_signed("HS256", rs384.as_pem(private=False), "rs384"),
    }

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as http:
            expect = Expectations(
                issuers=(f.issuer_v2,),
                audiences=(f.api.client_id,),
                entra=True,
                algorithms=frozenset({"ES384"}),  # as a provider's metadata would say
            )
            verifier = JwtVerifier(KeySetCache(entra.jwks_uri(), http), expect, "")
            results = {}
            for name, token in tokens.items():
                try:
                    results[name] = (await verifier.check(token)).scopes
                except Exception as refused:  # noqa: BLE001
                    results[name] = str(refused)
            return results

    results = asyncio.run(scenario())
    assert results["rs384"] == ["read"] and results["es384"] == ["read"]
    assert results["rs512"] == "token algorithm RS512 is not declared for key 'rs384' (RS384)"
    assert results["hs256"].startswith("token algorithm 'HS256' is not allowed")
