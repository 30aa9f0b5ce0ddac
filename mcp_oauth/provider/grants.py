"""The grants and endpoints the provider supports, as small Authlib subclasses.

Each grant only fills in the storage hooks Authlib asks for, plus one rule Authlib leaves to
us: the code, the refresh token or the device code is spent in the same database
transaction that stores the new tokens (see storage.py), so replays and races fail.
`register_grants_and_endpoints` at the bottom says in one place what the server supports.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant

from mcp_oauth.common.scopes import scope_set, scope_str
from mcp_oauth.common.text import printable
from mcp_oauth.provider.records import (
    CodeRecord,
    DeviceRecord,
    TokenRecord,
    is_loopback_redirect,
)
from mcp_oauth.provider.storage import GrantSpec, new_secret

if TYPE_CHECKING:
    from mcp_oauth.provider.authorization_server import AuthorizationServer

log = logging.getLogger("oauth_provider")

CONFIDENTIAL_AUTH = ["client_secret_basic", "client_secret_post"]
ANY_CLIENT_AUTH = [*CONFIDENTIAL_AUTH, "none"]
DEVICE_CODE_GRANT = DeviceCodeGrant.GRANT_TYPE
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AUTHORIZATION_CODE_LIFETIME = 300


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the requested resource is unknown or not allowed."""

    error = "invalid_target"


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 for every client (RFC 9700 §2.1.1): no challenge, or `plain`, is refused."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("code_challenge is required (PKCE with S256)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


def requested_resource(server: AuthorizationServer, request) -> str | None:
    """The single `resource` parameter (RFC 8707), checked against the known resources."""
    values = request.payload.datalist.get("resource", [])
    if len(values) > 1:
        raise InvalidTargetError("only one resource may be requested")
    if not values:
        return None
    if values[0] not in server.resources:
        raise InvalidTargetError(f"unknown resource: {printable(values[0])}")
    return values[0]


class ResourceIndicator:
    """Authorization-endpoint extension: the resource is validated and kept for the code."""

    def __call__(self, grant):
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    @staticmethod
    def validate(grant, redirect_uri):
        grant.request.resource = requested_resource(grant.server, grant.request)


def token_request_resource(server: AuthorizationServer, request, bound: str | None) -> str | None:
    """A `resource` at the token endpoint may only repeat the one the grant is bound to."""
    resource = requested_resource(server, request)
    if resource is not None and resource != bound:
        raise InvalidTargetError("resource differs from the one this grant was issued for")
    return bound


def allowed_scopes(
    server: AuthorizationServer, requested: set[str], account, resource: str | None
) -> set[str]:
    """What a user actually receives: requested ∩ what users.yaml allows the account ∩ what
    the resource accepts. Never more than any of the three."""
    allowed = requested & account.scopes
    if resource:
        allowed &= server.resources[resource].scopes
    return allowed


def granted_scopes(server: AuthorizationServer, request, account) -> tuple[set[str], set[str]]:
    """(granted, asked for but not available) for a validated authorization request."""
    requested = scope_set(request.scope)
    granted = allowed_scopes(server, requested, account, request.resource)
    return granted, requested - granted


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ANY_CLIENT_AUTH

    def save_authorization_code(self, code: str, request) -> None:
        account = request.user
        granted, _ = granted_scopes(self.server, request, account)
        if not granted:
            raise InvalidScopeError(
                f"{account.username} may not receive any of the requested scopes",
                redirect_uri=request.payload.redirect_uri,
                state=request.payload.state,
            )
        self.server.store.save_code(
            code,
            CodeRecord(
                code_hash="",
                client_id=request.client.client_id,
                username=account.username,
                redirect_uri=request.payload.redirect_uri,
                scope=scope_str(granted),
                resource=request.resource,
                code_challenge=request.payload.data["code_challenge"],
                code_challenge_method="S256",
                auth_time=int(time.time()),
                expires_at=int(time.time()) + AUTHORIZATION_CODE_LIFETIME,
            ),
        )

    def query_authorization_code(self, code: str, client) -> CodeRecord | None:
        found = self.server.store.find_code(code)
        if found is None:
            return None
        record, used = found
        if used:
            log.warning("authorization code replayed by %s: revoking its tokens", client.client_id)
            self.server.store.revoke_code_grant(record)
            return None
        if record.client_id != client.client_id or record.is_expired():
            return None
        return record

    def authenticate_user(self, authorization_code: CodeRecord):
        return self.server.accounts.get(authorization_code.username)

    def create_token_response(self):
        code: CodeRecord = self.request.authorization_code
        account = self.authenticate_user(code)
        if account is None:
            raise InvalidGrantError("the user of this code no longer exists")
        resource = token_request_resource(self.server, self.request, code.resource)
        spec = GrantSpec(self.client.client_id, account.username, code.scope, resource)
        body, issued = self.server.issuer.issue(
            spec,
            with_refresh=self.client.check_grant_type("refresh_token"),
        )
        if not self.server.store.redeem_code(code, spec, issued):
            self.server.store.revoke_code_grant(code)
            raise InvalidGrantError("authorization code was already used")
        return 200, body, self.TOKEN_RESPONSE_HEADER


class RefreshTokenGrant(grants.RefreshTokenGrant):
    """Rotating refresh tokens: every use returns a new one; a spent one revokes the family."""

    TOKEN_ENDPOINT_AUTH_METHODS = ANY_CLIENT_AUTH
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        token = self.server.store.find_token(refresh_token, "refresh")
        if token is None or token.is_expired():
            return None
        if token.is_revoked():
            if token.used_at is not None:
                log.warning("refresh token replayed: revoking its grant %s", token.grant_id)
                self.server.store.revoke_grant(token.grant_id)
            return None
        return token

    def authenticate_user(self, refresh_token: TokenRecord):
        return self.server.accounts.get(refresh_token.username)

    def create_token_response(self):
        old: TokenRecord = self.request.refresh_token
        account = self.authenticate_user(old)
        if account is None:
            raise InvalidGrantError("the user of this refresh token no longer exists")
        resource = token_request_resource(self.server, self.request, old.resource)
        # The scope may narrow, never widen (checked by Authlib against the refresh token's
        # scope); the user's current allowance in users.yaml applies at every refresh.
        scope = scope_str(scope_set(self.request.payload.scope or old.scope) & account.scopes)
        spec = GrantSpec(
            self.client.client_id, account.username, scope, resource, grant_id=old.grant_id
        )
        body, issued = self.server.issuer.issue(spec, with_refresh=True, refresh_scope=old.scope)
        if not self.server.store.rotate_refresh_token(old, spec, issued):
            self.server.store.revoke_grant(old.grant_id)
            raise InvalidGrantError("refresh token was already used")
        return 200, body, self.TOKEN_RESPONSE_HEADER


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH

    def create_token_response(self):
        client = self.client
        scope = client.get_allowed_scope(self.request.payload.scope)
        resource = requested_resource(self.server, self.request)
        spec = GrantSpec(client.client_id, None, scope, resource)
        body, issued = self.server.issuer.issue(spec, with_refresh=False)
        self.server.store.save_grant(spec, issued)
        return 200, body, self.TOKEN_RESPONSE_HEADER


class TokenExchangeGrant(grants.BaseGrant, grants.TokenEndpointMixin):
    """RFC 8693 token exchange, for the On-Behalf-Of pattern: a resource server trades the
    user's token it received for a token to a downstream API. The new token's subject is
    the user, `act` names the exchanging client, and its scope is never wider than the
    subject token's. Only clients marked `may_exchange_tokens` in users.yaml may do this."""

    GRANT_TYPE = TOKEN_EXCHANGE_GRANT
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH

    def validate_token_request(self):
        client = self.authenticate_token_endpoint_client()
        if not (client.check_grant_type(self.GRANT_TYPE) and client.may_exchange_tokens):
            raise UnauthorizedClientError("this client may not exchange tokens")
        form = self.request.payload.data
        if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError(f"subject_token_type must be {ACCESS_TOKEN_TYPE}")
        if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError(f"requested_token_type must be {ACCESS_TOKEN_TYPE}")
        if "actor_token" in form:
            raise InvalidRequestError("actor_token is not supported; the client is the actor")
        subject = self.server.store.find_token(form.get("subject_token") or "", "access")
        if subject is None or subject.is_expired() or subject.is_revoked():
            raise InvalidGrantError("subject_token is not an active access token")
        if subject.username is None:
            raise InvalidGrantError("subject_token has no user to act on behalf of")
        target = form.get("audience") or requested_resource(self.server, self.request)
        if target not in self.server.resources:
            raise InvalidTargetError(f"unknown audience or resource: {printable(target)}")
        requested = scope_set(self.request.payload.scope)
        if not requested <= scope_set(subject.scope):
            raise InvalidScopeError("the requested scope is wider than the subject token's")
        scope = (requested or scope_set(subject.scope)) & self.server.resources[target].scopes
        if not scope:
            raise InvalidScopeError(f"no scope of the subject token applies to {target}")
        self.request.client = client
        self.request.exchange = (subject, target, scope_str(scope))

    def create_token_response(self):
        subject, target, scope = self.request.exchange
        client_id = self.client.client_id
        spec = GrantSpec(client_id, subject.username, scope, target, actor=client_id)
        body, issued = self.server.issuer.issue(spec, with_refresh=False)
        self.server.store.save_grant(spec, issued)
        body["issued_token_type"] = ACCESS_TOKEN_TYPE
        return 200, body, self.TOKEN_RESPONSE_HEADER


class DeviceGrant(DeviceCodeGrant):
    """RFC 8628 §3.4–3.5: pending, slow_down (+5 s), access_denied, expired_token; one use."""

    TOKEN_ENDPOINT_AUTH_METHODS = ANY_CLIENT_AUTH

    def query_device_credential(self, device_code: str) -> DeviceRecord:
        polled = self.server.store.poll_device_code(device_code)
        if polled is None:
            raise InvalidGrantError("unknown device_code")
        record, self.polled_too_fast = polled
        if record.used_at is not None:
            raise InvalidGrantError("device_code was already used")
        self.device_record = record
        return record

    def query_user_grant(self, user_code: str):
        record: DeviceRecord = self.device_record
        if record.decision is None:
            return None
        return self.server.accounts.get(record.username), record.decision == "approved"

    def should_slow_down(self, credential: DeviceRecord) -> bool:
        return self.polled_too_fast

    def create_token_response(self):
        record: DeviceRecord = self.request.credential
        account = self.request.user
        if account is None:
            raise InvalidGrantError("the user who approved this device no longer exists")
        spec = GrantSpec(
            self.client.client_id, account.username, record.get_scope(), record.resource
        )
        body, issued = self.server.issuer.issue(
            spec,
            with_refresh=self.client.check_grant_type("refresh_token"),
        )
        if not self.server.store.redeem_device_code(record, spec, issued):
            raise InvalidGrantError("device_code was already used")
        return 200, body, self.TOKEN_RESPONSE_HEADER


class DeviceAuthorization(DeviceAuthorizationEndpoint):
    """RFC 8628 §3.1–3.2: hands out a device_code for polling and a user_code to type in."""

    CLIENT_AUTH_METHODS = ANY_CLIENT_AUTH
    EXPIRES_IN = 600
    INTERVAL = 5

    def create_endpoint_response(self, request):
        client = self.authenticate_client(request)
        if not client.check_grant_type(DEVICE_CODE_GRANT):
            raise UnauthorizedClientError("this client may not use the device authorization grant")
        check_scope_known(self.server, request.payload.scope)
        resource = requested_resource(self.server, request)
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
        self.server.store.save_device_code(
            data["device_code"],
            data["user_code"],
            client.client_id,
            client.get_allowed_scope(request.payload.scope),
            resource,
            self.EXPIRES_IN,
            self.INTERVAL,
        )
        return 200, data, self.server.json_headers


class TokenLookup:
    """Introspection and revocation find a token by its hash, whatever its type, so the
    optional token_type_hint is ignored, as RFC 7009 §2.1 and RFC 7662 §2.1 allow."""

    def check_params(self, request, client):
        if "token" not in request.form:
            raise InvalidRequestError("missing token")

    def query_token(self, token: str, token_type_hint: str | None) -> TokenRecord | None:
        return self.server.store.find_token(token)


class Introspection(TokenLookup, IntrospectionEndpoint):
    """RFC 7662. Client authentication is required; only resource-server clients may look at
    tokens issued to other clients. Anything not active is exactly {"active": false}."""

    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH

    def check_permission(self, token: TokenRecord, client, request) -> bool:
        return client.resource_server or token.client_id == client.client_id

    def introspect_token(self, token: TokenRecord) -> dict:
        payload = {
            "active": True,
            "scope": token.scope,
            "client_id": token.client_id,
            "sub": token.username or token.client_id,
            "iss": self.server.issuer_url,
            "exp": token.expires_at,
            "iat": token.issued_at,
            "token_type": "Bearer" if token.kind == "access" else "refresh_token",
        }
        if token.username:
            payload["username"] = token.username
        if token.resource:
            payload["aud"] = token.resource
        if token.actor:
            payload["act"] = {"sub": token.actor}
        return payload


class Revocation(TokenLookup, RevocationEndpoint):
    """RFC 7009. Public clients authenticate with their client_id; unknown tokens get 200."""

    CLIENT_AUTH_METHODS = ANY_CLIENT_AUTH

    def revoke_token(self, token: TokenRecord, request) -> None:
        self.server.store.revoke_token(token)


class ClientRegistration(ClientRegistrationEndpoint):
    """RFC 7591 registration the way MCP clients do it: open, for public native clients and
    confidential web clients using the authorization code flow. Unknown metadata is ignored."""

    ALLOWED_GRANT_TYPES = {"authorization_code", "refresh_token", DEVICE_CODE_GRANT}

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
        check_metadata_types(request.payload.data)
        metadata = super().extract_client_metadata(request)
        redirect_uris = metadata.get("redirect_uris") or []
        grant_types = metadata.setdefault("grant_types", ["authorization_code"])
        metadata.setdefault("response_types", ["code"])
        method = metadata.setdefault("token_endpoint_auth_method", "client_secret_basic")
        if method not in ANY_CLIENT_AUTH:
            raise InvalidClientMetadata(
                f"token_endpoint_auth_method must be one of {ANY_CLIENT_AUTH}"
            )
        if not set(grant_types) <= self.ALLOWED_GRANT_TYPES:
            raise InvalidClientMetadata(
                f"grant_types may only contain {sorted(self.ALLOWED_GRANT_TYPES)}"
            )
        if metadata["response_types"] != ["code"]:
            raise InvalidClientMetadata('response_types must be ["code"]')
        if "authorization_code" in grant_types and not redirect_uris:
            raise InvalidRedirectUri("redirect_uris is required for the authorization code grant")
        for uri in redirect_uris:
            problem = redirect_uri_problem(uri)
            if problem:
                raise InvalidRedirectUri(f"{printable(uri)}: {problem}")
        requested = scope_set(metadata.get("scope")) or set(self.server.scopes_supported)
        unknown = requested - set(self.server.scopes_supported)
        if unknown:
            raise InvalidClientMetadata(f"unknown scope: {printable(scope_str(unknown))}")
        metadata["scope"] = scope_str(requested)
        return metadata

    def save_client(self, client_info: dict, client_metadata: dict, request):
        self.server.store.save_client(
            client_info["client_id"], client_info.get("client_secret"), client_metadata
        )
        return self.server.store.get_client(client_info["client_id"])


class InvalidRedirectUri(OAuth2Error):
    error = "invalid_redirect_uri"


class InvalidClientMetadata(OAuth2Error):
    error = "invalid_client_metadata"


# Registration metadata (RFC 7591 §2) this server reads, and the JSON type each must have.
METADATA_TYPES: dict[str, type] = {
    "redirect_uris": list,
    "grant_types": list,
    "response_types": list,
    "contacts": list,
    "token_endpoint_auth_method": str,
    "client_name": str,
    "client_uri": str,
    "logo_uri": str,
    "scope": str,
    "tos_uri": str,
    "policy_uri": str,
    "jwks_uri": str,
    "software_id": str,
    "software_version": str,
    "jwks": dict,
}
MAX_CLIENT_NAME = 200
URI_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")


def check_metadata_types(data: dict) -> None:
    """Refuse wrongly typed or oversized metadata up front (Authlib's claim checks assume
    the types; a client name is shown to users, so it is kept short)."""
    if len(data.get("client_name") or "") > MAX_CLIENT_NAME:
        raise InvalidClientMetadata(f"client_name may have at most {MAX_CLIENT_NAME} characters")
    for name, expected in METADATA_TYPES.items():
        if name not in data:
            continue
        value = data[name]
        if not isinstance(value, expected):
            raise InvalidClientMetadata(f"{name} must be a JSON {expected.__name__}")
        if expected is list and not all(isinstance(item, str) for item in value):
            raise InvalidClientMetadata(f"{name} must be a list of strings")


def redirect_uri_problem(uri: str) -> str | None:
    """Why a redirect URI may not be registered (RFC 8252, RFC 9700 §4.1), or None."""
    if not URI_CHARACTERS.fullmatch(uri):
        return "not a valid URI (RFC 3986)"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "not a valid URI"
    if parts.fragment or "#" in uri:
        return "must not contain a fragment"
    if parts.username or parts.password:
        return "must not contain user information"
    if parts.scheme == "https" and parts.hostname:
        return None
    if is_loopback_redirect(uri):
        return None
    return "must use https, or http on a loopback address (RFC 8252 section 7.3)"


def register_grants_and_endpoints(server: AuthorizationServer) -> None:
    """Everything this authorization server supports, in one place. No implicit flow and no
    password grant exist here (RFC 9700 §2.1.2, §2.4)."""
    server.register_grant(
        AuthorizationCodeGrant, [S256CodeChallenge(required=True), ResourceIndicator()]
    )
    server.register_grant(RefreshTokenGrant)
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(DeviceGrant)
    server.register_grant(TokenExchangeGrant)
    server.register_endpoint(Introspection)
    server.register_endpoint(Revocation)
    server.register_endpoint(ClientRegistration)
    server.register_endpoint(DeviceAuthorization)


def check_scope_known(server: AuthorizationServer, scope: str | None) -> None:
    unknown = scope_set(scope) - set(server.scopes_supported)
    if unknown:
        raise InvalidScopeError(f"unknown scope: {printable(scope_str(unknown))}")
