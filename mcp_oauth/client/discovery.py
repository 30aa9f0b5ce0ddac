"""From an MCP server's 401 to the authorization server that guards it.

RFC 9728: the challenge's `resource_metadata` (or the well-known fallbacks) names the
protected resource and its authorization servers. RFC 8414: the first authorization server's
metadata, whose `issuer` must be exactly the identifier the resource named — anything else
could be a mix-up attack, so it stops the flow. The URL lists and the checks are the MCP SDK's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import httpx2
from mcp.client.auth import OAuthFlowError
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
    extract_resource_metadata_from_www_auth,
    validate_metadata_issuer,
)
from mcp.shared.auth import OAuthMetadata, ProtectedResourceMetadata
from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url
from pydantic import AnyHttpUrl, BaseModel, ValidationError

from mcp_oauth.client.errors import ClientError, reaching
from mcp_oauth.common.oauth_errors import refusal_reason

Model = TypeVar("Model", bound=BaseModel)


class ServerMetadata(OAuthMetadata):
    """RFC 8414 metadata plus the RFC 8628 endpoint the SDK's model does not carry."""

    device_authorization_endpoint: AnyHttpUrl | None = None


@dataclass
class Discovered:
    """The protected resource (as it describes itself) and its authorization server."""

    resource: str
    resource_metadata: ProtectedResourceMetadata
    metadata: ServerMetadata


async def discover(
    http: httpx2.AsyncClient, server_url: str, challenge: httpx2.Response
) -> Discovered:
    resource_metadata = await _first_document(
        http,
        build_protected_resource_metadata_discovery_urls(
            extract_resource_metadata_from_www_auth(challenge), server_url
        ),
        ProtectedResourceMetadata,
        what="MCP server",
        fix="start it (python mcp_resource_server.py) or pass the right --url",
        failing_fix="start its authorization server (python oauth_provider.py), then retry",
    )
    if resource_metadata is None:
        raise ClientError(
            f"{server_url} asks for a token but publishes no resource metadata (RFC 9728)",
            "configure the MCP server's OAuth settings (mcp_resource_server.py does this)",
        )
    resource = str(resource_metadata.resource)
    if not check_resource_allowed(resource_url_from_server_url(server_url), resource):
        raise ClientError(
            f"{server_url} describes itself as the resource {resource}",
            "fix MCP_SERVER_URL on the MCP server, or use the URL it names with --url",
        )
    if not resource_metadata.authorization_servers:
        raise ClientError(
            f"{server_url} names no authorization server in its metadata",
            "set OAUTH_PROVIDER_URL on the MCP server",
        )
    issuer = str(resource_metadata.authorization_servers[0])
    metadata = await _first_document(
        http,
        build_oauth_authorization_server_metadata_discovery_urls(issuer, server_url),
        ServerMetadata,
        what="authorization server",
        fix="start it (python oauth_provider.py) or fix OAUTH_PROVIDER_URL on the MCP server",
        failing_fix="see the authorization server's log, then retry",
    )
    if metadata is None:
        raise ClientError(
            f"{issuer} publishes no authorization server metadata (RFC 8414)",
            "check OAUTH_PROVIDER_URL on the MCP server points at the provider",
        )
    try:
        validate_metadata_issuer(metadata, issuer)
    except OAuthFlowError as exc:
        raise ClientError(
            f"the authorization server's metadata names issuer {metadata.issuer}, not {issuer}",
            "make the provider's --issuer match OAUTH_PROVIDER_URL on the MCP server",
        ) from exc
    return Discovered(resource, resource_metadata, metadata)


async def _first_document(
    http: httpx2.AsyncClient,
    urls: list[str],
    model: type[Model],
    what: str,
    fix: str,
    failing_fix: str,
) -> Model | None:
    """The first of `urls` that answers 200 with a valid document (the RFCs' fallback order).

    `fix` is the advice when the server cannot be reached, `failing_fix` when it answers 5xx.
    """
    for url in urls:
        with reaching(what, url, fix):
            response = await http.get(url)
        if response.status_code == 200:
            try:
                return model.model_validate_json(response.content)
            except ValidationError:
                continue
        if response.status_code >= 500:
            reason = refusal_reason(response)
            because = f": {reason}" if reason else ""
            raise ClientError(f"{url} answered HTTP {response.status_code}{because}", failing_fix)
    return None
