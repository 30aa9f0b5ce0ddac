"""The signed-in user a tool runs for, as the tools see it: read from the verified token of the
running request, never from anything the client put in the tool's arguments."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    owner: str
    """The key this caller's stored data is filed under (data_owner)."""
    token: str = field(repr=False)
    """The caller's own bearer token: only ever sent back to the provider (token exchange)."""


def data_owner(subject: str | None, username: str | None, client_id: str) -> str:
    """`client:<client id>` for a client acting for itself, `user:<subject>` otherwise, so
    that neither can read the other's data whatever their names. RFC 9068 §2.2: a token issued
    with no resource owner (client credentials) names the client in `sub`, or names nobody."""
    if not username and subject in (None, client_id):
        return f"client:{client_id}"
    return f"user:{subject or username}"


def display_name(claims: Mapping[str, Any]) -> str | None:
    """The user's name as the provider shows it (OpenID Connect Core §5.1 `preferred_username`,
    or `username` as RFC 7662 §2.2 and this project's provider say it); None if it names none,
    and the caller is then shown by subject. Only ever shown: data is filed by subject."""
    name = claims.get("preferred_username") or claims.get("username")
    return str(name) if name else None


def current_caller() -> Caller:
    """The caller of the running tool; a ToolError if the request carried no valid token."""
    token = get_access_token()
    if token is None:
        raise ToolError("This tool needs a signed-in user: send a bearer token.")
    username = display_name(token.claims or {})
    if not (token.subject or username or token.client_id):
        raise ToolError("The token names neither a user nor a client (no sub or client_id).")
    owner = data_owner(token.subject, username, token.client_id)
    subject = token.subject or username or owner
    return Caller(
        # A client acting for itself is shown as what it is, never as a user of its name.
        username=username or (owner if owner.startswith("client:") else subject),
        subject=subject,
        client_id=token.client_id,
        scopes=frozenset(token.scopes),
        expires_at=token.expires_at,
        owner=owner,
        token=token.token,
    )
