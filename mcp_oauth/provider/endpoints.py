"""The endpoints besides /authorize and /token, as small Authlib subclasses (oauth_provider.py
registers them): introspection, revocation, client registration, device authorization; and
the per-address limit in front of registration."""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import UnauthorizedClientError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_oauth.common.scopes import scope_str
from mcp_oauth.provider.checks import (
    check_registration_size,
    check_scope_known,
    requested_resource,
)
from mcp_oauth.provider.client_checks import (
    check_metadata_types,
    check_registered_auth_method,
    check_registered_grant_types,
    check_registered_redirect_uris,
    check_registered_response_types,
    registered_client_name,
    registered_scope,
)
from mcp_oauth.provider.hashed_secrets import new_secret
from mcp_oauth.provider.records import ANY_CLIENT_AUTH, CONFIDENTIAL_AUTH, TokenRecord
from mcp_oauth.provider.scope_policy import requested_scopes
from mcp_oauth.provider.token_minter import token_claims


class TokenLookup:
    """Introspection and revocation find a token by its hash, whatever its type, so the
    optional token_type_hint is ignored, as RFC 7009 §2.1 and RFC 7662 §2.1 allow. The
    requests are answered by token_lookup_endpoints.py from these classes' rules
    (CLIENT_AUTH_METHODS, check_permission, introspect_token, revoke_token)."""


class Introspection(TokenLookup, IntrospectionEndpoint):
    """RFC 7662. Client authentication is required; only resource-server clients may look at
    tokens issued to other clients. Anything not active is exactly {"active": false}."""

    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH

    def check_permission(self, token: TokenRecord, client, request) -> bool:
        return client.resource_server or token.client_id == client.client_id

    def introspect_token(self, token: TokenRecord) -> dict:
        claims = token_claims(
            self.server.issuer_url, token, token.issued_at, token.expires_at, token.actors
        )
        token_type = "Bearer" if token.kind == "access" else "refresh_token"
        return {"active": True, **claims, "token_type": token_type}


class Revocation(TokenLookup, RevocationEndpoint):
    """RFC 7009. Public clients authenticate with their client_id; unknown tokens get 200."""

    CLIENT_AUTH_METHODS = ANY_CLIENT_AUTH

    def revoke_token(self, token: TokenRecord, request) -> None:
        self.server.store.tokens.revoke(token)


class ClientRegistration(ClientRegistrationEndpoint):
    """RFC 7591 registration the way MCP clients do it: open, for public native clients and
    confidential web clients using the authorization code flow. Unknown metadata is ignored."""

    ALLOWED_GRANT_TYPES = {"authorization_code", "refresh_token", DeviceCodeGrant.GRANT_TYPE}

    def authenticate_token(self, request):
        return True  # open registration, as MCP clients expect

    def get_server_metadata(self) -> dict:
        return self.server.metadata

    def generate_client_secret(self, request) -> str | None:
        method = request.payload.data.get("token_endpoint_auth_method", "client_secret_basic")
        return None if method == "none" else new_secret()

    def generate_client_info(self, request) -> dict:
        info = super().generate_client_info(request)
        if info["client_secret"] is None:  # a public client: no secret fields at all
            del info["client_secret"], info["client_secret_expires_at"]
        return info

    def extract_client_metadata(self, request) -> dict:
        check_registration_size(request.payload.data)
        check_metadata_types(request.payload.data)
        metadata = super().extract_client_metadata(request)
        if "client_name" in metadata:
            metadata["client_name"] = registered_client_name(
                metadata["client_name"], self.server.operator_client_names
            )
        grant_types = metadata.setdefault("grant_types", ["authorization_code"])
        metadata.setdefault("response_types", ["code"])
        method = metadata.setdefault("token_endpoint_auth_method", "client_secret_basic")
        check_registered_auth_method(method, ANY_CLIENT_AUTH)
        check_registered_grant_types(grant_types, self.ALLOWED_GRANT_TYPES)
        check_registered_response_types(metadata["response_types"])
        check_registered_redirect_uris(metadata.get("redirect_uris") or [], grant_types)
        metadata["scope"] = registered_scope(metadata.get("scope"), self.server.scopes_supported)
        return metadata

    def save_client(self, client_info: dict, client_metadata: dict, request):
        client_id = client_info["client_id"]
        self.server.store.clients.save(client_id, client_info.get("client_secret"), client_metadata)
        return self.server.store.clients.get(client_id)


class RegistrationLimit:
    """Open registration, at most `per_hour` requests per client address (counted in the
    database, so replicas share the count); beyond it 429 with Retry-After (RFC 6585 §4).
    The address is the peer's, or the one a trusted proxy forwarded (uvicorn's
    FORWARDED_ALLOW_IPS), as for sign-in throttling."""

    WINDOW = 3600

    def __init__(self, register, rate_limits, per_hour: int):
        self.register = register
        self.rate_limits = rate_limits
        self.per_hour = per_hour

    async def serve(self, request: Request) -> Response:
        if self.per_hour > 0:
            address = request.client.host if request.client else "unknown"
            wait = await run_in_threadpool(
                self.rate_limits.reserve, f"register:{address}", self.per_hour, self.WINDOW
            )
            if wait:
                return JSONResponse(
                    {
                        "error": "too_many_requests",
                        "error_description": "too many registrations from this address; "
                        f"try again in {wait} seconds",
                    },
                    429,
                    {"Retry-After": str(wait), "Cache-Control": "no-store"},
                )
        return await self.register(request)


class DeviceAuthorization(DeviceAuthorizationEndpoint):
    """RFC 8628 §3.1–3.2: hands out a device_code for polling and a user_code to type in."""

    CLIENT_AUTH_METHODS = ANY_CLIENT_AUTH
    EXPIRES_IN = 600
    INTERVAL = 5

    def create_endpoint_response(self, request):
        client = self.authenticate_client(request)
        if not client.check_grant_type(DeviceCodeGrant.GRANT_TYPE):
            raise UnauthorizedClientError("this client may not use the device authorization grant")
        check_scope_known(request.payload.scope, self.server.scopes_supported)
        resource = requested_resource(request.payload, self.server.resources)
        data = {
            "device_code": self.generate_device_code(),
            "user_code": self.generate_user_code(),
            "verification_uri": f"{self.server.issuer_url}/device",
            "expires_in": self.EXPIRES_IN,
            "interval": self.INTERVAL,
        }
        data["verification_uri_complete"] = (
            f"{data['verification_uri']}?user_code={data['user_code']}"
        )
        self.server.store.devices.save(
            data["device_code"],
            data["user_code"],
            client.client_id,
            scope_str(requested_scopes(client, request.payload.scope)),
            resource,
            self.EXPIRES_IN,
            self.INTERVAL,
        )
        return 200, data, self.server.json_headers
