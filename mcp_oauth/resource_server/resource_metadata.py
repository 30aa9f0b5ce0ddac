"""RFC 9728 protected resource metadata: where a client learns which authorization server
issues tokens for this resource, and with which scopes."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_oauth.resource_server.challenges import unavailable
from mcp_oauth.resource_server.fastmcp_internals import allow_cors
from mcp_oauth.resource_server.provider_discovery import Provider, ProviderUnavailable


def resource_metadata_path(resource: str) -> str:
    """RFC 9728 §3.1: the well-known segment goes between the host and the resource's path."""
    return "/.well-known/oauth-protected-resource" + urlsplit(resource).path.rstrip("/")


def resource_metadata_url(resource: str) -> str:
    """The absolute URL of `resource`'s metadata, as 401 challenges name it (RFC 9728 §5.1)."""
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{resource_metadata_path(resource)}"


def protected_resource_routes(
    *, resource: str, provider: Provider, scopes: list[str], resource_name: str
) -> list[Route]:
    """RFC 9728 metadata at /.well-known/oauth-protected-resource, with and without the path.

    Served by hand: pydantic's AnyHttpUrl would add a trailing slash to a bare-origin issuer,
    and clients compare `authorization_servers` with the issuer string by string.
    """

    async def metadata(_request: Request) -> Response:
        try:
            issuer = (await provider.metadata()).issuer
        except ProviderUnavailable as exc:
            return unavailable(exc).to_oauth()
        return JSONResponse(
            {
                "resource": resource,
                "authorization_servers": [issuer],
                "scopes_supported": scopes,
                "bearer_methods_supported": ["header"],
                "resource_name": resource_name,
            }
        )

    endpoint = allow_cors(metadata, ["GET", "OPTIONS"])
    paths = dict.fromkeys(
        [resource_metadata_path(resource), "/.well-known/oauth-protected-resource"]
    )
    return [Route(path, endpoint=endpoint, methods=["GET", "OPTIONS"]) for path in paths]
