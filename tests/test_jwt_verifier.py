"""JWT access tokens checked locally (resource_server.jwt_verifier, key_set, jwt_claims,
entra) against key sets over HTTP, and the choice of that or introspection (verifier_choice).

Peers, all real HTTP:
* Entra ID cannot run here, so it is imitated (tests/peers/entra.py) with its real v1.0/v2.0
  token shapes, issuers and audiences, and a local key set; its hit counter shows how often the
  verifier fetches that key set.
* our own provider, started with `--access-token-format jwt` (RFC 9068 tokens);
* node oidc-provider in JWT mode (Keycloak stand-in), which cannot introspect its JWTs: the one
  case where local checking is the only way.
Mode selection (introspection vs JWT) is pure logic, tested on metadata documents, plus once
against our provider's real metadata.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey

from mcp_oauth.resource_server.entra import entra_expectations
from mcp_oauth.resource_server.introspection import IntrospectionVerifier
from mcp_oauth.resource_server.jwt_claims import header_refusal, scopes_of
from mcp_oauth.resource_server.jwt_verifier import JwtVerifier
from mcp_oauth.resource_server.key_set import KeySetCache
from mcp_oauth.resource_server.provider_discovery import Provider as DiscoveredProvider
from mcp_oauth.resource_server.provider_discovery import ProviderMetadata, ProviderUnavailable
from mcp_oauth.resource_server.validation_settings import ConfigurationError, ValidationSettings
from mcp_oauth.resource_server.verified_token import TokenRefused
from mcp_oauth.resource_server.verifier_choice import ChosenVerifier, choose_mode
from tests.conftest import RS_SECRET, Provider, start_provider
from tests.support import free_port

pytest.register_assert_rewrite("tests.peer_fixtures")
from tests.peer_fixtures import EntraServer, OidcProviderPeer  # noqa: E402

pytest_plugins = ["tests.peer_fixtures"]

RESOURCE = "http://127.0.0.1:8000/mcp"
OTHER_RESOURCE = "http://127.0.0.1:8001/other"
VERSIONS = ["1.0", "2.0"]
T = TypeVar("T")


class Clock:
    """A monotonic clock the test moves by hand, for the key set's TTL and refetch limit."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run an async scenario with its own event loop and HTTP client."""

    async def main() -> T:
        async with httpx.AsyncClient(timeout=5) as http:
            return await scenario(http)

    return asyncio.run(main())


async def outcome(verifier: JwtVerifier | ChosenVerifier, token: str) -> Any:
    """The AccessToken, or the refusal reason as a string."""
    try:
        return await verifier.check(token)
    except TokenRefused as refused:
        return str(refused)


def entra_verifier(
    entra: EntraServer, http: httpx.AsyncClient, clock: Clock | None = None
) -> JwtVerifier:
    f = entra.factory
    keys = KeySetCache(entra.jwks_uri(), http, clock=clock or Clock())
    expect = entra_expectations(f.tenant_id, f.api.client_id, None)
    return JwtVerifier(keys, expect, RESOURCE)


def jwks_hits(entra: EntraServer) -> int:
    return entra.hits[urlsplit(entra.jwks_uri()).path]


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- Entra (imitated) ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_entra_user_token_accepted_with_identity(entra: EntraServer, version: str) -> None:
    f = entra.factory
    token = f.access_token(version, scp="read write")
    access = run(lambda http: entra_verifier(entra, http).check(token))
    assert access.scopes == ["read", "write"]
    assert access.subject == f"{f.user.oid}@{f.tenant_id}"  # not the pairwise `sub`
    assert access.claims["username"] == f.user.upn
    assert access.client_id == f.client.client_id  # azp (v2) or appid (v1)
    assert access.expires_at == access.claims["exp"] > time.time()
    assert access.resource == RESOURCE and access.token == token


@pytest.mark.parametrize("version", VERSIONS)
def test_entra_app_token_scopes_from_roles(entra: EntraServer, version: str) -> None:
    f = entra.factory
    token = f.app_token(version, roles=("read", "admin"))
    access = run(lambda http: entra_verifier(entra, http).check(token))
    assert access.scopes == ["read", "admin"]
    assert access.client_id == f.downstream.client_id
    assert "username" not in access.claims


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        ("wrong_issuer", "token issuer"),
        ("wrong_audience", "token audience"),
        ("foreign_key", "signature does not match any key in http://127.0.0.1:"),
        ("expired", "token expired at"),
        ("not_yet_valid", "token is not valid before"),
    ],
)
def test_entra_bad_tokens_refused(entra: EntraServer, version: str, make: str, reason: str) -> None:
    token = getattr(entra.factory, make)(version)

    async def scenario(http: httpx.AsyncClient) -> tuple[Any, Any]:
        verifier = entra_verifier(entra, http)
        return await outcome(verifier, token), await verifier.verify_token(token)

    why, access = run(scenario)
    assert isinstance(why, str) and why.startswith(reason), why
    assert access is None


def test_entra_refusal_names_the_fix(entra: EntraServer) -> None:
    f = entra.factory
    why = run(lambda http: outcome(entra_verifier(entra, http), f.wrong_audience("2.0")))
    assert why == (
        f"token audience {f.downstream.client_id!r} is not this server "
        f"({f.api.client_id} or api://{f.api.client_id})"
    )


def test_entra_id_token_refused(entra: EntraServer) -> None:
    """An ID token has Entra's typ, iss and (for one app) aud, but no scp or roles."""
    f = entra.factory
    claims = f.user_claims("2.0")
    del claims["scp"]
    token = f.sign(claims, "2.0")
    why = run(lambda http: outcome(entra_verifier(entra, http), token))
    assert why == "token has no scp or roles claim: not an Entra access token"


def test_unknown_kid_refetches_once_and_rotation_works(entra: EntraServer) -> None:
    f = entra.factory
    clock = Clock()

    async def scenario(http: httpx.AsyncClient) -> None:
        verifier = entra_verifier(entra, http, clock)
        assert not isinstance(await outcome(verifier, f.access_token()), str)
        assert not isinstance(await outcome(verifier, f.access_token("1.0")), str)
        assert jwks_hits(entra) == 1  # cached
        f.rotate_keys(retire_old=True)
        assert not isinstance(await outcome(verifier, f.access_token()), str)
        assert jwks_hits(entra) == 2  # the new kid caused exactly one refetch
        assert not isinstance(await outcome(verifier, f.access_token()), str)
        assert jwks_hits(entra) == 2
        clock.advance(3601)  # the TTL: fetched again even for a known kid
        assert not isinstance(await outcome(verifier, f.access_token()), str)
        assert jwks_hits(entra) == 3

    run(scenario)


def test_junk_kids_refetch_at_most_once_per_interval(entra: EntraServer) -> None:
    f = entra.factory
    clock = Clock()

    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        verifier = entra_verifier(entra, http, clock)
        await verifier.check(f.access_token())
        junk = [await outcome(verifier, f.unknown_kid()) for _ in range(20)]
        assert jwks_hits(entra) == 2  # the first fetch and one refetch
        clock.advance(31)
        junk.append(await outcome(verifier, f.unknown_kid()))
        assert jwks_hits(entra) == 3
        assert verifier.metrics()["jwks_refetches_refused"] == 19
        return junk

    for why in run(scenario):
        assert why.startswith("token key id ") and f"is not in {entra.jwks_uri()}" in why


def test_key_set_failure_is_unavailable_never_acceptance(entra: EntraServer) -> None:
    f = entra.factory
    token = f.access_token()

    async def scenario(http: httpx.AsyncClient, jwks_uri: str) -> ProviderUnavailable:
        keys = KeySetCache(jwks_uri, http)
        verifier = JwtVerifier(keys, entra_expectations(f.tenant_id, f.api.client_id, None), "")
        with pytest.raises(ProviderUnavailable) as caught:
            await verifier.verify_token(token)
        with pytest.raises(ProviderUnavailable):  # backing off: refused at once
            await verifier.verify_token(token)
        assert keys.counters["jwks_fetches"] == 1
        return caught.value

    down = run(lambda http: scenario(http, f"http://127.0.0.1:{free_port()}/keys"))
    assert down.retry_after >= 1
    missing = run(lambda http: scenario(http, f"{entra.base_url}/no/such/keys"))
    assert "404" in str(missing)


def test_algorithm_and_typ_rules(entra: EntraServer) -> None:
    f = entra.factory
    claims = f.user_claims("2.0")
    hmac_key = OctKey.import_key(b"a-shared-secret-that-must-never-work!")
    hs256 = jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, hmac_key)
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    ec_key = ECKey.generate_key("P-256", {"kid": "ec-1", "use": "sig"}, private=True)
    f.keys.append(ec_key)  # type: ignore[arg-type]  # published beside the RSA key
    es256 = jwt.encode({"alg": "ES256", "typ": "JWT", "kid": "ec-1"}, claims, ec_key)

    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        verifier = entra_verifier(entra, http)
        return [await outcome(verifier, t) for t in (hs256, unsigned, es256, "opaque-token")]

    hs, none, es, opaque = run(scenario)
    assert hs == "token algorithm 'HS256' is not allowed (only RSA, ECDSA or EdDSA signatures)"
    assert none == "token algorithm 'none' is not allowed (only RSA, ECDSA or EdDSA signatures)"
    assert es.scopes == ["read", "write"]
    assert opaque.startswith("token is not a signed JWT")
    # Plain `JWT` is Entra's habit; elsewhere RFC 9068's at+jwt is required.
    assert header_refusal({"alg": "RS256", "typ": "JWT"}, entra=True) is None
    assert "is not at+jwt" in header_refusal({"alg": "RS256", "typ": "JWT"}, entra=False)
    assert header_refusal({"alg": "ES256", "typ": "application/at+jwt"}, entra=False) is None
    assert "is not at+jwt" in header_refusal({"alg": "RS256"}, entra=False)


def test_entra_chosen_from_settings_and_discovered_metadata(entra: EntraServer) -> None:
    """The imitation serves Entra's v2.0 document (real issuer, local jwks_uri) at a local
    URL: the metadata URL override, while the issuer stays Entra's."""
    f = entra.factory
    settings = ValidationSettings.from_env(
        {"MCP_ENTRA_TENANT_ID": f.tenant_id, "MCP_ENTRA_CLIENT_ID": f.api.client_id}
    )
    assert settings.mode == "auto" and settings.entra

    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        verifier = ChosenVerifier(
            settings,
            provider=DiscoveredProvider(
                f.issuer_v2, f.api.client_id, "", http, metadata_url=entra.discovery_url()
            ),
            resource_url=RESOURCE,
            client_credentials=True,
            introspection=lambda: pytest.fail("Entra has no introspection"),
        )
        results = [await outcome(verifier, f.access_token(v)) for v in VERSIONS]
        assert verifier.metrics()["mode"] == "jwt"
        assert verifier.chosen.keys.jwks_uri == entra.jwks_uri()
        return results

    for access in run(scenario):
        assert access.scopes == ["read", "write"]


# -- our provider, JWT mode ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwt_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    handle = start_provider(
        tmp_path_factory.mktemp("jwt-provider"),
        env={"OAUTH_RESOURCES": f"{RESOURCE},{OTHER_RESOURCE}"},
        args=["--access-token-format", "jwt"],
    )
    yield handle
    handle.process.stop()


def provider_token(provider: Provider, resource: str | None, scope: str = "read write") -> str:
    form = {"grant_type": "client_credentials", "scope": scope}
    if resource:
        form["resource"] = resource
    response = httpx.post(
        f"{provider.url}/token", data=form, auth=("mcp-resource-server", RS_SECRET), timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def chosen(
    provider_url: str, http: httpx.AsyncClient, mode: str, *, credentials: bool = True
) -> ChosenVerifier:
    settings = ValidationSettings.from_env({"MCP_TOKEN_VALIDATION": mode})
    return ChosenVerifier(
        settings,
        provider=DiscoveredProvider(provider_url, "", "", http),
        resource_url=RESOURCE,
        client_credentials=credentials,
        introspection=lambda: pytest.fail("introspection was not expected"),
    )


def test_our_provider_jwt_verified_locally(jwt_provider: Provider) -> None:
    good = provider_token(jwt_provider, jwt_provider.resource)
    other = provider_token(jwt_provider, OTHER_RESOURCE)
    no_aud = provider_token(jwt_provider, None)

    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        verifier = chosen(jwt_provider.url, http, "jwt")
        results = [await outcome(verifier, t) for t in (good, other, no_aud)]
        assert verifier.mode == "jwt"
        return results

    access, wrong_aud, missing_aud = run(scenario)
    assert access.scopes == ["read", "write"]
    assert access.client_id == access.subject == "mcp-resource-server"
    assert access.claims["iss"] == jwt_provider.url
    assert wrong_aud == f"token audience {OTHER_RESOURCE!r} is not this server ({RESOURCE})"
    assert missing_aud == f"token audience None is not this server ({RESOURCE})"


def test_auto_mode_against_our_provider(jwt_provider: Provider) -> None:
    """It advertises introspection and jwks_uri: client credentials decide which is used."""
    token = provider_token(jwt_provider, jwt_provider.resource)

    async def scenario(http: httpx.AsyncClient) -> tuple[str, Any, str]:
        rs = DiscoveredProvider(jwt_provider.url, "mcp-resource-server", RS_SECRET, http)
        with_credentials = ChosenVerifier(
            ValidationSettings(),
            provider=rs,
            resource_url=RESOURCE,
            client_credentials=True,
            introspection=lambda: IntrospectionVerifier(rs, RESOURCE),
        )
        access = await with_credentials.check(token)
        without = chosen(jwt_provider.url, http, "auto", credentials=False)
        await without.choose()
        return with_credentials.mode, access, without.mode

    mode, access, fallback = run(scenario)
    assert mode == "introspection" and access.scopes == ["read", "write"]
    assert fallback == "jwt"


# -- node oidc-provider, JWT mode ------------------------------------------------------------------


@pytest.fixture(scope="module")
def oidc_jwt(oidc_provider_factory: Callable[..., OidcProviderPeer]) -> OidcProviderPeer:
    return oidc_provider_factory("jwt", RESOURCE)


def test_oidc_provider_jwt_verified_locally(oidc_jwt: OidcProviderPeer) -> None:
    token = oidc_jwt.client_credentials_token("read write")
    # Its introspection says nothing useful about its own JWTs: local checking is the way.
    assert oidc_jwt.introspect(token).json() == {"active": False}
    access = run(lambda http: chosen(oidc_jwt.issuer, http, "jwt").check(token))
    assert access.scopes == ["read", "write"]
    assert access.client_id == "test-client"
    assert access.claims["iss"] == oidc_jwt.issuer


# -- mode selection --------------------------------------------------------------------------------

URL = "http://as"
BOTH = {"introspection_endpoint": "http://as/i", "jwks_uri": "http://as/k"}


def metadata(**document: str) -> ProviderMetadata:
    return ProviderMetadata.from_document({"issuer": URL, **document}, URL)


@pytest.mark.parametrize(
    ("mode", "document", "credentials", "expected"),
    [
        ("auto", BOTH, True, "introspection"),
        ("auto", BOTH, False, "jwt"),
        ("auto", {"jwks_uri": "http://as/k"}, True, "jwt"),
        ("jwt", BOTH, True, "jwt"),
        ("introspection", {"introspection_endpoint": "http://as/i"}, True, "introspection"),
    ],
)
def test_choose_mode(mode: str, document: dict, credentials: bool, expected: str) -> None:
    settings = ValidationSettings.from_env({"MCP_TOKEN_VALIDATION": mode})
    assert choose_mode(settings, metadata(**document), client_credentials=credentials) == expected


def test_choose_mode_errors_name_the_fix() -> None:
    auto = ValidationSettings()
    with pytest.raises(ConfigurationError) as neither:
        choose_mode(auto, metadata(), client_credentials=True)
    assert str(neither.value).startswith(
        "provider http://as has no introspection endpoint and no jwks_uri"
    )
    introspection_only = metadata(introspection_endpoint="http://as/i")
    with pytest.raises(ConfigurationError, match="MCP_RS_CLIENT_SECRET"):
        choose_mode(auto, introspection_only, client_credentials=False)
    forced = ValidationSettings(mode="introspection")
    with pytest.raises(ConfigurationError, match="MCP_RS_CLIENT_SECRET"):
        choose_mode(forced, introspection_only, client_credentials=False)
    with pytest.raises(ConfigurationError, match="has no introspection endpoint: use"):
        choose_mode(forced, metadata(jwks_uri="http://as/k"), client_credentials=True)
    with pytest.raises(ConfigurationError, match="=jwt, but provider http://as has no jwks_uri"):
        choose_mode(ValidationSettings(mode="jwt"), introspection_only, client_credentials=True)
    overridden = ValidationSettings(jwks_url="http://keys")
    assert choose_mode(overridden, metadata(), client_credentials=False) == "jwt"
    entra = ValidationSettings.from_env({"MCP_ENTRA_TENANT_ID": "t", "MCP_ENTRA_CLIENT_ID": "c"})
    assert choose_mode(entra, metadata(**BOTH), client_credentials=True) == "jwt"


def test_settings_from_env() -> None:
    tenant, client = str(uuid.uuid4()), str(uuid.uuid4())
    s = ValidationSettings.from_env(
        {"MCP_ENTRA_TENANT_ID": tenant, "MCP_ENTRA_CLIENT_ID": client, "MCP_JWT_LEEWAY": "30"}
    )
    assert (s.mode, s.leeway, s.jwks_cache_ttl, s.jwks_refetch_interval) == ("auto", 30, 3600, 30)
    expect = entra_expectations(tenant, client, s.entra_app_id_uri)
    assert expect.audiences == (client, f"api://{client}")
    assert expect.issuers == (
        f"https://sts.windows.net/{tenant}/",
        f"https://login.microsoftonline.com/{tenant}/v2.0",
    )
    for bad, fix in [
        ({"MCP_TOKEN_VALIDATION": "maybe"}, "auto, introspection or jwt"),
        ({"MCP_ENTRA_TENANT_ID": tenant}, "MCP_ENTRA_CLIENT_ID"),
        ({"MCP_JWKS_CACHE_TTL": "soon"}, "MCP_JWKS_CACHE_TTL must be a number"),
        (
            {
                "MCP_TOKEN_VALIDATION": "introspection",
                "MCP_ENTRA_TENANT_ID": tenant,
                "MCP_ENTRA_CLIENT_ID": client,
            },
            "Entra has no introspection endpoint",
        ),
    ]:
        with pytest.raises(ConfigurationError, match=fix):
            ValidationSettings.from_env(bad)


def test_scopes_from_scope_scp_or_roles() -> None:
    assert scopes_of({"scope": "read write"}) == ["read", "write"]
    assert scopes_of({"scp": "read", "roles": ["admin", "read"]}) == ["read", "admin"]
    assert scopes_of({"scp": ["read", 3, "read"]}) == ["read"]
    assert scopes_of({"scope": 7}) == []
