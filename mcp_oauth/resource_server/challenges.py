"""The 401, 403 and 503 answers, each telling the client exactly what to do next (RFC 6750 §3,
RFC 9728 §5.1, the MCP authorization spec):

- no token where one is needed       → 401, WWW-Authenticate names resource_metadata and scope
- a token that is invalid or revoked → 401 as above, plus error="invalid_token" and the reason
                                       in error_description
- a valid token without the scope    → 403 error="insufficient_scope" naming the tool's scope
- the provider cannot be asked       → 503 with Retry-After (never a 401: that loops logins)
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from mcp_oauth.common.text import printable
from mcp_oauth.resource_server.provider_discovery import ProviderUnavailable
from mcp_oauth.resource_server.tool_scopes import Requirement


class Challenges:
    """The 401 and 403 answers of one resource, pointing at its RFC 9728 metadata."""

    def __init__(self, resource_metadata_url: str, login_scope: str):
        self.resource_metadata_url = resource_metadata_url
        self.login_scope = login_scope
        """Scope asked for when a request needs a user but no particular scope."""

    def unauthorized(self, requirement: Requirement, *, refused: str | None = None) -> Response:
        """401 for a request without a token, or with one refused for the reason `refused`."""
        scope = requirement if isinstance(requirement, str) else self.login_scope
        params = []
        if refused is not None:
            params = [("error", "invalid_token"), ("error_description", refused)]
        params += [("resource_metadata", self.resource_metadata_url), ("scope", scope)]
        description = refused or (
            "This request needs a bearer token: see resource_metadata for where to get one."
        )
        return _bearer_response(401, params, description)

    def forbidden(self, scope: str) -> Response:
        """403 insufficient_scope (RFC 6750 §3.1), naming the scope to step up to."""
        params = [
            ("error", "insufficient_scope"),
            ("scope", scope),
            ("resource_metadata", self.resource_metadata_url),
        ]
        return _bearer_response(403, params, f"This tool needs the {scope!r} scope.")


def _bearer_response(status: int, params: list[tuple[str, str]], description: str) -> Response:
    challenge = "Bearer " + ", ".join(f'{name}="{quotable(value)}"' for name, value in params)
    body = {"error": dict(params).get("error", "unauthorized"), "error_description": description}
    return JSONResponse(body, status, headers={"WWW-Authenticate": challenge})


def quotable(text: str, limit: int = 300) -> str:
    """`text` as an RFC 6750 §3 attribute value. A refusal reason may quote a claim of the
    (untrusted) token; its double quotes become single ones so the reason stays readable."""
    return printable(text.replace('"', "'"), limit)


def unavailable(exc: ProviderUnavailable) -> Response:
    """503 for an authorization server that cannot be asked now (RFC 9110 §15.6.4)."""
    body = {
        "error": "temporarily_unavailable",
        "error_description": "The authorization server cannot be reached; retry later.",
    }
    return JSONResponse(body, 503, headers={"Retry-After": str(exc.retry_after)})
