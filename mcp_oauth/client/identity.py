"""Which client the user signs in through, in the MCP specification's order of preference.

1. A client id registered with the provider beforehand (`--client-id` / `MCP_CLIENT_ID`;
   our provider ships `mcp-client`), with its secret if it is a confidential client
   (`--client-secret` / `MCP_CLIENT_SECRET`).
2. A client ID metadata document (`--client-metadata-url`), when the authorization server
   advertises `client_id_metadata_document_supported`: the URL itself is the client id.
3. Dynamic client registration (RFC 7591), remembered in the token cache and reused only
   with the issuer that registered it (SEP-2352).

The client asks to be a public native client: no secret, loopback redirect URI registered
without a port so any free port works (RFC 8252 §7.3). The registration answer is
authoritative (RFC 7591 §3.2.1): a provider that registers it as a confidential client
(`client_secret_basic` or `client_secret_post`) gets its token requests authenticated so
(`token_requests.client_authentication`), and the secret is kept, like tokens, only in the
owner-only token cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx2
from mcp.client.auth import OAuthRegistrationError
from mcp.client.auth.oauth2 import check_registration_usable
from mcp.client.auth.utils import (
    create_client_info_from_metadata_url,
    create_client_registration_request,
    handle_registration_response,
    should_use_client_metadata_url,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata
from pydantic import AnyUrl

from mcp_oauth.client.discovery import ServerMetadata
from mcp_oauth.client.errors import ClientError, reaching
from mcp_oauth.client.token_requests import GRANT_TYPES

# Not the name of the pre-registered `mcp-client`: the provider refuses self-registered names
# that imitate an operator's client.
CLIENT_NAME = "Learner CLI (client.py)"
REGISTERED_REDIRECT_URI = "http://127.0.0.1/callback"


@dataclass(frozen=True)
class ClientIdentity:
    """The identity options the user gave; `resolve` picks one for a given provider."""

    client_id: str | None = None
    client_secret: str | None = None
    client_metadata_url: str | None = None

    async def resolve(
        self,
        http: httpx2.AsyncClient,
        metadata: ServerMetadata,
        registered_before: OAuthClientInformationFull | None,
    ) -> OAuthClientInformationFull:
        redirect_uris = [AnyUrl(REGISTERED_REDIRECT_URI)]
        if self.client_id:
            return OAuthClientInformationFull(
                client_id=self.client_id,
                client_secret=self.client_secret,
                token_endpoint_auth_method=secret_method(metadata)
                if self.client_secret
                else "none",
                redirect_uris=redirect_uris,
            )
        if should_use_client_metadata_url(metadata, self.client_metadata_url):
            return create_client_info_from_metadata_url(
                self.client_metadata_url,  # type: ignore[arg-type]  # checked just above
                redirect_uris=redirect_uris,
            )
        if registered_before is not None and registered_before.issuer == str(metadata.issuer):
            return registered_before
        return await register(http, metadata, redirect_uris)


def secret_method(metadata: ServerMetadata) -> str:
    """How a pre-registered confidential client presents its secret: the provider's preferred
    of the two RFC 6749 §2.3.1 methods (RFC 8414 §2: client_secret_basic when unstated)."""
    supported = metadata.token_endpoint_auth_methods_supported or ["client_secret_basic"]
    for method in ("client_secret_basic", "client_secret_post"):
        if method in supported:
            return method
    raise ClientError(
        f"{metadata.issuer} accepts no client secret at its token endpoint "
        f"(it supports: {', '.join(supported)})",
        "drop --client-secret (MCP_CLIENT_SECRET) to sign in as a public client",
    )


async def register(
    http: httpx2.AsyncClient, metadata: ServerMetadata, redirect_uris: list[AnyUrl]
) -> OAuthClientInformationFull:
    """RFC 7591 registration, asking for a public client for every grant type the client uses;
    the answer says what the client is (an omitted `token_endpoint_auth_method`: as asked)."""
    if metadata.registration_endpoint is None:
        raise ClientError(
            f"{metadata.issuer} offers no dynamic client registration",
            "pass a client id registered there with --client-id (or MCP_CLIENT_ID)",
        )
    client_metadata = OAuthClientMetadata(
        client_name=CLIENT_NAME,
        redirect_uris=redirect_uris,
        token_endpoint_auth_method="none",
        grant_types=list(GRANT_TYPES),
    )
    request = create_client_registration_request(metadata, client_metadata, str(metadata.issuer))
    with reaching("authorization server", str(request.url), "start it (python oauth_provider.py)"):
        response = await http.send(request)
    try:
        client = await handle_registration_response(response)
        check_registration_usable(client)  # a method it can apply, and the secret it needs
    except OAuthRegistrationError as exc:
        raise ClientError(
            f"dynamic client registration at {request.url} failed: {exc}",
            "pass a pre-registered client id with --client-id (our provider has mcp-client)",
        ) from exc
    client.token_endpoint_auth_method = client.token_endpoint_auth_method or "none"  # as asked
    client.issuer = str(metadata.issuer)  # binds the registration to this provider (SEP-2352)
    return client
