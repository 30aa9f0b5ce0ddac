"""Which client the user signs in through, in the MCP specification's order of preference.

1. A client id registered with the provider beforehand (`--client-id` / `MCP_CLIENT_ID`;
   our provider ships `mcp-client`).
2. A client ID metadata document (`--client-metadata-url`), when the authorization server
   advertises `client_id_metadata_document_supported`: the URL itself is the client id.
3. Dynamic client registration (RFC 7591), remembered in the token cache and reused for as
   long as the issuer stays the same.

Every identity is a public native client: no secret, loopback redirect URI registered
without a port so any free port works (RFC 8252 §7.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx2
from mcp.client.auth import OAuthRegistrationError
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

CLIENT_NAME = "MCP learner client (client.py)"
REGISTERED_REDIRECT_URI = "http://127.0.0.1/callback"


@dataclass(frozen=True)
class ClientIdentity:
    """The identity options the user gave; `resolve` picks one for a given provider."""

    client_id: str | None = None
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
                token_endpoint_auth_method="none",
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


async def register(
    http: httpx2.AsyncClient, metadata: ServerMetadata, redirect_uris: list[AnyUrl]
) -> OAuthClientInformationFull:
    """RFC 7591 registration of a public client for every grant type the client uses."""
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
    except OAuthRegistrationError as exc:
        raise ClientError(
            f"dynamic client registration at {request.url} failed: {exc}",
            "pass a pre-registered client id with --client-id (our provider has mcp-client)",
        ) from exc
    if client.token_endpoint_auth_method not in (None, "none"):
        raise ClientError(
            f"{metadata.issuer} registered this client as a confidential one "
            f"({client.token_endpoint_auth_method}), but it cannot keep a secret",
            "pass a public client id registered there with --client-id",
        )
    client.issuer = str(metadata.issuer)  # binds the registration to this provider (SEP-2352)
    return client
