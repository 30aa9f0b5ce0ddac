"""Smoke tests for the external peers: they start, issue the tokens later tests rely on, and
those tokens validate (or fail) the way a resource server will see them."""

from __future__ import annotations

import time

import httpx
import pytest
from joserfc import errors, jwt
from joserfc.jwk import KeySet

pytest.register_assert_rewrite("tests.peer_fixtures")
from tests.peer_fixtures import TEST_RS_SECRET, EntraServer, OidcProviderPeer  # noqa: E402

pytest_plugins = ["tests.peer_fixtures"]

RESOURCE = "http://127.0.0.1:8000/mcp"
VERSIONS = ["1.0", "2.0"]


def verify_jwt(jwks_url: str, token: str, issuer: str, audience: str) -> jwt.Token:
    """What a resource server does with a JWT: keys over HTTP, then signature, iss, aud, time."""
    keys = KeySet.import_key_set(httpx.get(jwks_url, timeout=5).json())
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    jwt.JWTClaimsRegistry(
        leeway=300,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
    ).validate(decoded.claims)
    return decoded


# -- oidc-provider ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["opaque", "jwt"])
def oidc(request: pytest.FixtureRequest, oidc_provider_factory) -> OidcProviderPeer:
    return oidc_provider_factory(request.param, RESOURCE, TEST_RS_SECRET)


def test_oidc_provider_discovery(oidc: OidcProviderPeer) -> None:
    meta = oidc.metadata
    assert meta["issuer"] == oidc.issuer
    assert "client_credentials" in meta["grant_types_supported"]
    for key in ("token_endpoint", "introspection_endpoint", "revocation_endpoint", "jwks_uri"):
        assert meta[key].startswith(oidc.issuer)
    # oidc-provider serves OpenID discovery only; RFC 8414 metadata is not there.
    root = httpx.get(f"{oidc.issuer}/.well-known/oauth-authorization-server", timeout=5)
    assert root.status_code == 404


def test_client_credentials_token_bound_to_resource(oidc: OidcProviderPeer) -> None:
    token = oidc.client_credentials_token("read write")
    answer = oidc.introspect(token)
    assert answer.status_code == 200
    if oidc.access_token_format == "opaque":
        info = answer.json()
        assert info["active"] is True
        assert info["aud"] == RESOURCE
        assert info["iss"] == oidc.issuer
        assert info["scope"] == "read write"
        assert info["client_id"] == "test-client"
        assert info["exp"] > time.time()
    else:
        decoded = verify_jwt(oidc.jwks_uri, token, oidc.issuer, RESOURCE)
        assert decoded.header["typ"] == "at+jwt"  # RFC 9068
        assert decoded.claims["scope"] == "read write"
        assert decoded.claims["client_id"] == "test-client"
        # oidc-provider's JWT access tokens are stateless: not introspectable (unlike Keycloak).
        assert answer.json() == {"active": False}


def test_bench_client_gets_admin_scope(oidc: OidcProviderPeer) -> None:
    token = oidc.client_credentials_token("read write admin", client_id="bench-client")
    if oidc.access_token_format == "opaque":
        assert oidc.introspect(token).json()["scope"] == "read write admin"
    else:
        claims = verify_jwt(oidc.jwks_uri, token, oidc.issuer, RESOURCE).claims
        assert claims["scope"] == "read write admin"


def test_unknown_resource_is_invalid_target(oidc: OidcProviderPeer) -> None:
    response = oidc.token_request(
        grant_type="client_credentials", scope="read", resource="http://127.0.0.1:1/other"
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


def test_introspection_requires_the_resource_server(oidc: OidcProviderPeer) -> None:
    if oidc.access_token_format == "jwt":
        pytest.skip("JWT access tokens are not introspectable in oidc-provider")
    token = oidc.client_credentials_token("read")
    assert oidc.introspect(
        token, client_id="bench-client", client_secret=oidc.client_secret
    ).json() == {"active": False}
    assert oidc.introspect(token, client_secret="wrong").status_code == 401


def test_revoked_token_is_inactive(oidc: OidcProviderPeer) -> None:
    if oidc.access_token_format == "jwt":
        pytest.skip("JWT access tokens are not revocable in oidc-provider")
    token = oidc.client_credentials_token("read")
    assert oidc.revoke(token).status_code == 200
    assert oidc.introspect(token).json() == {"active": False}


# -- Entra imitation -------------------------------------------------------------------------------
def test_entra_discovery_documents(entra: EntraServer) -> None:
    tid = entra.factory.tenant_id
    v2 = httpx.get(entra.discovery_url("2.0"), timeout=5).json()
    assert v2["issuer"] == f"https://login.microsoftonline.com/{tid}/v2.0"
    assert v2["jwks_uri"] == entra.jwks_uri("2.0")
    assert v2["token_endpoint"] == entra.token_endpoint
    v1 = httpx.get(entra.discovery_url("1.0"), timeout=5).json()
    assert v1["issuer"] == f"https://sts.windows.net/{tid}/"
    keys = httpx.get(v1["jwks_uri"], timeout=5).json()["keys"]
    assert [k["kid"] for k in keys] == [entra.factory.signing_key.kid]
    assert "d" not in keys[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_entra_token_shapes_verify(entra: EntraServer, version: str) -> None:
    f = entra.factory
    token = f.access_token(version, scp="read write")
    decoded = verify_jwt(entra.jwks_uri(version), token, f.issuer(version), f.audience(version))
    header, claims = decoded.header, decoded.claims
    assert header["typ"] == "JWT" and header["kid"] == f.signing_key.kid
    assert claims["ver"] == version and claims["scp"] == "read write"
    assert claims["tid"] == f.tenant_id and claims["oid"] == f.user.oid
    if version == "1.0":
        assert claims["aud"] == f"api://{f.api.client_id}"
        assert claims["appid"] == f.client.client_id and claims["upn"] == f.user.upn
        assert header["x5t"] == header["kid"]
    else:
        assert claims["aud"] == f.api.client_id
        assert claims["azp"] == f.client.client_id
        assert claims["preferred_username"] == f.user.upn and claims["sub"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("make", "error"),
    [
        ("wrong_issuer", errors.InvalidClaimError),
        ("wrong_audience", errors.InvalidClaimError),
        ("foreign_key", errors.BadSignatureError),
        ("unknown_kid", errors.InvalidKeyIdError),
        ("expired", errors.ExpiredTokenError),
        ("not_yet_valid", errors.InvalidClaimError),
    ],
)
def test_entra_bad_tokens_fail(entra: EntraServer, version: str, make: str, error: type) -> None:
    f = entra.factory
    token = getattr(f, make)(version)
    with pytest.raises(error):
        verify_jwt(entra.jwks_uri(version), token, f.issuer(version), f.audience(version))


def test_entra_key_rotation_publishes_new_kid(entra: EntraServer) -> None:
    f = entra.factory
    old_kid = f.signing_key.kid
    new_kid = f.rotate_keys()
    kids = [k["kid"] for k in httpx.get(entra.jwks_uri(), timeout=5).json()["keys"]]
    assert kids == [old_kid, new_kid]
    decoded = verify_jwt(entra.jwks_uri(), f.access_token(), f.issuer(), f.audience())
    assert decoded.header["kid"] == new_kid


@pytest.mark.parametrize("version", VERSIONS)
def test_entra_on_behalf_of(entra: EntraServer, version: str) -> None:
    f = entra.factory
    user_token = f.access_token(version)
    response = httpx.post(
        entra.token_endpoint,
        timeout=5,
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "requested_token_use": "on_behalf_of",
            "assertion": user_token,
            "client_id": f.api.client_id,
            "client_secret": f.api.client_secret,
            "scope": f"{f.downstream.app_id_uri}/.default",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    uri = f.downstream.app_id_uri
    assert body["scope"] == f"{uri}/Files.Read {uri}/Files.Write"
    claims = verify_jwt(
        entra.jwks_uri(), body["access_token"], f.issuer_v2, f.downstream.client_id
    ).claims
    assert claims["ver"] == "2.0" and claims["azp"] == f.api.client_id
    assert claims["oid"] == f.user.oid and claims["tid"] == f.tenant_id
    assert claims["scp"] == "Files.Read Files.Write"


@pytest.mark.parametrize(
    ("assertion", "secret", "status", "code"),
    [
        ("wrong_audience", None, 400, 500131),  # a token meant for another API
        ("expired", None, 400, 500133),
        ("foreign_key", None, 400, 50013),
        ("access_token", "wrong-secret", 401, 7000215),
    ],
)
def test_entra_on_behalf_of_rejections(
    entra: EntraServer, assertion: str, secret: str | None, status: int, code: int
) -> None:
    f = entra.factory
    response = httpx.post(
        entra.token_endpoint,
        timeout=5,
        auth=(f.api.client_id, secret or f.api.client_secret),
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "requested_token_use": "on_behalf_of",
            "assertion": getattr(f, assertion)(),
            "scope": f"{f.downstream.app_id_uri}/.default",
        },
    )
    assert response.status_code == status
    assert response.json()["error_codes"] == [code]
