"""RFC 8414 authorization server metadata, derived from what oauth_provider.py registered with
Authlib and routed with Starlette (no second list to keep in step), and the well-known paths
it is served at."""

from __future__ import annotations

from urllib.parse import urlsplit

from authlib.oauth2.rfc7636 import CodeChallenge
from mcp.client.auth.utils import build_oauth_authorization_server_metadata_discovery_urls
from starlette.routing import BaseRoute, Route

from mcp_oauth.provider.authorization_server import AuthorizationServer
from mcp_oauth.provider.identity import ID_TOKEN_ALG, supported_claims

# Authlib's name of each endpoint, and the RFC 8414 key (and route name) that gives its URL.
ENDPOINT_KEYS = {
    "introspection": "introspection_endpoint",
    "revocation": "revocation_endpoint",
    "client_registration": "registration_endpoint",
    "device_authorization": "device_authorization_endpoint",
    "end_session": "end_session_endpoint",  # OpenID Connect RP-Initiated Logout §2.1
}


def _union(lists) -> list[str]:
    return list(dict.fromkeys(item for values in lists for item in values))


def authlib_served_keys(server: AuthorizationServer) -> set[str]:
    """The metadata keys of what Authlib serves: /authorize when a grant uses it, /token when
    a grant uses it, and every registered endpoint."""
    keys = {ENDPOINT_KEYS[endpoint.ENDPOINT_NAME] for endpoint in server.endpoints}
    if any(hasattr(grant, "check_authorization_endpoint") for grant, _ in server.grants):
        keys.add("authorization_endpoint")
    if any(hasattr(grant, "check_token_endpoint") for grant, _ in server.grants):
        keys.add("token_endpoint")
    return keys


def endpoint_urls(server: AuthorizationServer, routes: list[BaseRoute]) -> dict[str, str]:
    """`<name>_endpoint` and `<name>_uri` URLs from the routes named so; an Authlib endpoint
    registered but not routed, or routed but not registered, stops the start."""
    urls = {
        route.name: f"{server.issuer_url}{route.path}"
        for route in routes
        if isinstance(route, Route) and route.name.endswith(("_endpoint", "_uri"))
    }
    served = authlib_served_keys(server)
    routed = urls.keys() & {"authorization_endpoint", "token_endpoint", *ENDPOINT_KEYS.values()}
    if served != routed:
        raise RuntimeError(f"registered and routed endpoints differ: {sorted(served ^ routed)}")
    return urls


def openid_metadata(server: AuthorizationServer) -> dict:
    """OpenID Connect Discovery 1.0 §3, beyond RFC 8414's fields, when the server issues ID
    tokens: pairwise subjects, request objects and request_uri (whose default is true) are not
    supported, so it says so."""
    if not server.issues_id_tokens:
        return {}
    return {
        "subject_types_supported": ["public"],  # sub is the username (identity.py)
        "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
        "claims_supported": supported_claims(),
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }


def server_metadata(server: AuthorizationServer, routes: list[BaseRoute]) -> dict:
    """RFC 8414 §2 metadata; the same document is OpenID Connect discovery (§3), served at
    both well-known URLs."""
    grants = server.grants
    endpoint_auth = {
        endpoint.ENDPOINT_NAME: getattr(endpoint, "CLIENT_AUTH_METHODS", None)
        for endpoint in server.endpoints
    }
    return {
        "issuer": server.issuer_url,
        **endpoint_urls(server, routes),
        "scopes_supported": server.scopes_supported,
        "response_types_supported": _union(
            sorted(grant.RESPONSE_TYPES)
            for grant, _ in grants
            if hasattr(grant, "check_authorization_endpoint")
        ),
        "response_modes_supported": ["query"],
        "grant_types_supported": [grant.GRANT_TYPE for grant, _ in grants],
        "token_endpoint_auth_methods_supported": _union(
            grant.TOKEN_ENDPOINT_AUTH_METHODS for grant, _ in grants
        ),
        "introspection_endpoint_auth_methods_supported": endpoint_auth["introspection"],
        "revocation_endpoint_auth_methods_supported": endpoint_auth["revocation"],
        "code_challenge_methods_supported": _union(
            extension.SUPPORTED_CODE_CHALLENGE_METHOD
            for _, extensions in grants
            for extension in extensions
            if isinstance(extension, CodeChallenge)
        ),
        "authorization_response_iss_parameter_supported": True,  # RFC 9207, see authorize_page.py
        "resource_indicators_supported": True,  # RFC 8707, see checks.requested_resource
        "client_id_metadata_document_supported": True,  # see client_documents.py
        "access_token_format": server.minter.access_token_format,
        **openid_metadata(server),
    }


def well_known_paths(issuer_url: str) -> list[str]:
    """Where clients look for the metadata (RFC 8414 §3.1, OpenID Connect Discovery §4): the
    URLs the MCP SDK tries for this issuer, and the host's root ones."""
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(issuer_url))
    urls = [
        *build_oauth_authorization_server_metadata_discovery_urls(issuer_url, issuer_url),
        *build_oauth_authorization_server_metadata_discovery_urls(origin, origin),
    ]
    return list(dict.fromkeys(urlsplit(url).path for url in urls))
