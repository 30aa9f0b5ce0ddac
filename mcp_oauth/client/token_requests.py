"""The client's conversations with the token, device and revocation endpoints.

Authorization code exchange with the PKCE verifier (RFC 7636), refresh (RFC 6749 §6),
device authorization and polling (RFC 8628 §3.1–3.5), revocation (RFC 7009). Every token
request carries `resource` (RFC 8707) so the token is issued for this MCP server only.
An error answer becomes an `OAuthErrorResponse`; `explain` turns it into a one-line cause
and fix for the user.

"Grant" means one thing here, as in RFC 6749 §1.3: an authorization grant, the credential a
token request presents (`grant_type` and its parameters).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote

import anyio
import httpx2
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import BaseModel, ValidationError

from mcp_oauth.client.discovery import ServerMetadata
from mcp_oauth.client.errors import ClientError, reaching
from mcp_oauth.common.oauth_errors import oauth_error

Model = TypeVar("Model", bound=BaseModel)
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
GRANT_TYPES = ("authorization_code", "refresh_token", DEVICE_CODE_GRANT)  # all the client uses
SLOW_DOWN_SECONDS = 5  # RFC 8628 §3.5: each slow_down adds five seconds to the interval

# What to do about each RFC 6749 / 8628 / 8707 error code a user can meet.
FIXES = {
    "access_denied": "run the command again and approve the request",
    "expired_token": "run the command again and enter the code before it expires",
    "invalid_client": "check --client-id, or drop it to let the client register itself",
    "invalid_grant": "sign in again (run 'logout', then the command again)",
    "invalid_scope": "ask only for scopes the MCP server lists (see --scope)",
    "invalid_target": "make the provider issue tokens for this server: OAUTH_RESOURCES=<MCP URL>",
    "unauthorized_client": "this client may not use that grant; try --client-id mcp-client",
    "unsupported_grant_type": "the provider does not offer this login mode; use another one",
}


class ClientRejected(ClientError):
    """The provider does not accept this client's requests: an unknown client id (its
    registration was lost when the provider's database was reset) or redirect URI."""


class OAuthErrorResponse(Exception):
    """An authorization server's error answer (RFC 6749 §4.1.2.1, §5.2; RFC 8628 §3.5)."""

    def __init__(self, error: str, description: str | None = None):
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description


def explain(failure: OAuthErrorResponse, doing: str) -> ClientError:
    return ClientError(
        f"{doing} failed: {failure}",
        FIXES.get(failure.error, "re-run with --trace to see the exchange"),
    )


@dataclass(frozen=True)
class Endpoints:
    """One client at one authorization server: all a token request needs besides its grant.

    `resource` is the RFC 8707 resource indicator every request carries; None (scripts and
    tests only) asks for a token without an audience.
    """

    http: httpx2.AsyncClient
    metadata: ServerMetadata
    client: OAuthClientInformationFull
    resource: str | None

    @property
    def resource_parameter(self) -> dict[str, str]:
        return {"resource": self.resource} if self.resource else {}

    async def post(self, endpoint: str, data: dict[str, str]) -> httpx2.Response:
        """POST a form as this client, authenticated the way it is registered: the token,
        device authorization and revocation endpoints all take the same client authentication
        (RFC 6749 §2.3, RFC 8628 §3.1, RFC 7009 §2.1)."""
        form, headers = client_authentication(self.client, data)
        with reaching("authorization server", endpoint, "start it (python oauth_provider.py)"):
            return await self.http.post(endpoint, data=form, headers=headers)

    async def token(self, grant: dict[str, str]) -> OAuthToken:
        response = await self.post(
            str(self.metadata.token_endpoint), grant | self.resource_parameter
        )
        return parse(response, OAuthToken)

    async def exchange_code(self, code: str, redirect_uri: str, code_verifier: str) -> OAuthToken:
        return await self.token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            }
        )

    async def refresh(self, refresh_token: str) -> OAuthToken:
        return await self.token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def start_device_authorization(self, scope: str | None) -> DeviceAuthorization:
        if self.metadata.device_authorization_endpoint is None:
            raise ClientError(
                f"{self.metadata.issuer} does not offer the device authorization grant",
                "sign in with the browser (drop --device)",
            )
        data = self.resource_parameter | ({"scope": scope} if scope else {})
        response = await self.post(str(self.metadata.device_authorization_endpoint), data)
        return parse(response, DeviceAuthorization)

    async def poll_device_token(self, device: DeviceAuthorization) -> OAuthToken:
        """Poll every `interval` seconds until the user decides (RFC 8628 §3.4–3.5)."""
        interval = device.interval
        deadline = time.monotonic() + device.expires_in
        while time.monotonic() < deadline:
            await anyio.sleep(interval)
            try:
                return await self.token(
                    {"grant_type": DEVICE_CODE_GRANT, "device_code": device.device_code}
                )
            except OAuthErrorResponse as failure:
                if failure.error == "slow_down":
                    interval += SLOW_DOWN_SECONDS
                elif failure.error != "authorization_pending":
                    raise
        raise OAuthErrorResponse("expired_token", "the code expired before it was approved")

    async def revoke(self, token: str, hint: str) -> None:
        if self.metadata.revocation_endpoint is None:
            raise ClientError(
                f"{self.metadata.issuer} offers no token revocation (RFC 7009)",
                "the tokens stay valid until they expire; delete the cache file to forget them",
            )
        response = await self.post(
            str(self.metadata.revocation_endpoint), {"token": token, "token_type_hint": hint}
        )
        if response.status_code != 200:
            raise error_of(response)


def client_authentication(
    client: OAuthClientInformationFull, form: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The form and headers of a request from `client`, per its `token_endpoint_auth_method`
    (RFC 6749 §2.3.1): `none` names the client in the form (a public client, RFC 6749 §3.2.1);
    `client_secret_basic` sends id and secret, form-encoded, in an HTTP Basic header;
    `client_secret_post` sends both in the form. Never more than one method per request."""
    method = client.token_endpoint_auth_method or "none"
    secret = client.client_secret
    if method == "none":
        return form | {"client_id": client.client_id}, {}
    if secret and method == "client_secret_basic":
        pair = f"{quote(client.client_id, safe='')}:{quote(secret, safe='')}"
        return form, {"Authorization": f"Basic {base64.b64encode(pair.encode()).decode()}"}
    if secret and method == "client_secret_post":
        return form | {"client_id": client.client_id, "client_secret": secret}, {}
    raise ClientError(
        f"the client {client.client_id!r} is registered for {method}"
        + ("" if secret else " but has no client secret"),
        "give its secret with --client-secret, or register a public client (drop --client-id)",
    )


class DeviceAuthorization(BaseModel):
    """RFC 8628 §3.2 device authorization response."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None = None
    expires_in: int
    interval: int = 5


def parse(response: httpx2.Response, model: type[Model]) -> Model:
    if response.status_code != 200:
        raise error_of(response)
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ClientError(
            f"{response.request.url} answered with an unexpected document "
            f"({exc.error_count()} problems)",
            "check that the authorization server is an OAuth 2.0 provider; re-run with --trace",
        ) from exc


def error_of(response: httpx2.Response) -> OAuthErrorResponse:
    """The RFC 6749 §5.2 error in an answer, or its HTTP status when it carries none."""
    error = oauth_error(response)
    if error is None:
        return OAuthErrorResponse(f"HTTP {response.status_code}", response.reason_phrase)
    return OAuthErrorResponse(*error)
