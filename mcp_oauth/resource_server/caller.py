"""The signed-in user a tool runs for, as the tools see it: read from the verified token of the
running request, never from anything the client put in the tool's arguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_access_token


@dataclass(frozen=True)
class Caller:
    """Who runs the tool: user, subject, client, scopes and expiry of their token."""

    username: str
    subject: str
    client_id: str
    scopes: frozenset[str]
    expires_at: int | None
    token: str = field(repr=False)
    """The caller's own bearer token: only ever sent back to the provider (token exchange)."""

    @property
    def owner(self) -> str:
        """The key this user's stored data is filed under: the stable subject, not the name."""
        return self.subject


def current_caller() -> Caller:
    """The caller of the running tool; a ToolError if the request carried no valid token."""
    token = get_access_token()
    if token is None:
        raise ToolError("This tool needs a signed-in user: send a bearer token.")
    claims = token.claims or {}
    username = claims.get("username") or claims.get("preferred_username")
    subject = token.subject or username
    if not subject:
        if not token.client_id:
            raise ToolError("The token names neither a user nor a client (no sub or client_id).")
        # Client credentials: the client acts for itself, kept apart from any user's data.
        subject = f"client:{token.client_id}"
    return Caller(
        username=str(username or subject),
        subject=str(subject),
        client_id=token.client_id,
        scopes=frozenset(token.scopes),
        expires_at=token.expires_at,
        token=token.token,
    )
