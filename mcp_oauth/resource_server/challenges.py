"""The 401, 403 and 503 answers, each telling the client exactly what to do next (RFC 6750 §3,
RFC 9728 §5.1, the MCP authorization spec):

- no token where one is needed       → 401, WWW-Authenticate names resource_metadata and scope
- a token that is invalid or revoked → 401 as above, plus error="invalid_token" and the reason
                                       in error_description
- a valid token without the scope    → 403 error="insufficient_scope" naming the tool's scope
- the provider cannot be asked       → 503 with Retry-After (never a 401: that loops logins)

Each speaks both languages: the HTTP status and WWW-Authenticate challenge are what OAuth
clients act on; the body is a JSON-RPC error object with the request's id, whose `data` holds
the challenge's parameters and `error_description`, for MCP clients that read bodies.

The MCP spec gives authorization failures no JSON-RPC code (HTTP carries them), so the codes
come from the implementation-defined band -32000..-32019 (mcp_types.jsonrpc), avoiding -32000
and -32001, which the official SDKs use for their own errors (connection closed, request
timeout; "session not found" on 2025 servers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.responses import JSONResponse, Response

from mcp_oauth.common.text import printable
from mcp_oauth.resource_server.json_rpc import RequestId, error_response
from mcp_oauth.resource_server.provider_discovery import ProviderUnavailable
from mcp_oauth.resource_server.tool_scopes import Requirement

TOKEN_REQUIRED = -32010
"""JSON-RPC code of a 401: no token, or one refused."""
SCOPE_REQUIRED = -32011
"""JSON-RPC code of a 403 insufficient_scope."""
AUTHORIZATION_SERVER_UNAVAILABLE = -32012
"""JSON-RPC code of a 503: tokens cannot be checked now."""


@dataclass(frozen=True)
class Refusal:
    """Why a request may not run, said in HTTP and in JSON-RPC."""

    status: int
    code: int
    data: dict[str, str]
    """The OAuth error parameters: `error` (when there is one) and `error_description`,
    plus the challenge's `resource_metadata` and `scope`."""
    headers: dict[str, str] = field(default_factory=dict)

    def to_json_rpc(self, request_id: RequestId | None) -> Response:
        """The answer to an MCP request: a JSON-RPC error object carrying `request_id`."""
        message = self.data["error_description"]
        return error_response(
            self.status, self.code, message, request_id, data=self.data, headers=self.headers
        )

    def to_oauth(self) -> Response:
        """The answer to a plain HTTP request (the metadata document): the OAuth error body."""
        return JSONResponse(self.data, self.status, headers=self.headers)


class Challenges:
    """The 401 and 403 answers of one resource, pointing at its RFC 9728 metadata."""

    def __init__(self, resource_metadata_url: str, login_scope: str):
        self.resource_metadata_url = resource_metadata_url
        self.login_scope = login_scope
        """Scope asked for when a request needs a user but no particular scope."""

    def unauthorized(self, requirement: Requirement, *, refused: str | None = None) -> Refusal:
        """401 for a request without a token, or with one refused for the reason `refused`."""
        scope = requirement if isinstance(requirement, str) else self.login_scope
        params = []
        if refused is not None:
            params = [("error", "invalid_token"), ("error_description", refused)]
        params += [("resource_metadata", self.resource_metadata_url), ("scope", scope)]
        description = refused or (
            "This request needs a bearer token: see resource_metadata for where to get one."
        )
        return _bearer_refusal(401, TOKEN_REQUIRED, params, description)

    def forbidden(self, scope: str) -> Refusal:
        """403 insufficient_scope (RFC 6750 §3.1), naming the scope to step up to."""
        params = [
            ("error", "insufficient_scope"),
            ("scope", scope),
            ("resource_metadata", self.resource_metadata_url),
        ]
        return _bearer_refusal(403, SCOPE_REQUIRED, params, f"This tool needs the {scope!r} scope.")


def _bearer_refusal(
    status: int, code: int, params: list[tuple[str, str]], description: str
) -> Refusal:
    challenge = "Bearer " + ", ".join(f'{name}="{quotable(value)}"' for name, value in params)
    data = {**dict(params), "error_description": quotable(description)}
    return Refusal(status, code, data, {"WWW-Authenticate": challenge})


def quotable(text: str, limit: int = 300) -> str:
    """`text` as an RFC 6750 §3 attribute value. A refusal reason may quote a claim of the
    (untrusted) token; its double quotes become single ones so the reason stays readable."""
    return printable(text.replace('"', "'"), limit)


def unavailable(exc: ProviderUnavailable) -> Refusal:
    """503 for an authorization server that cannot be asked now (RFC 9110 §15.6.4)."""
    data = {
        "error": "temporarily_unavailable",
        "error_description": "The authorization server cannot be reached; retry later.",
    }
    return Refusal(
        503, AUTHORIZATION_SERVER_UNAVAILABLE, data, {"Retry-After": str(exc.retry_after)}
    )
