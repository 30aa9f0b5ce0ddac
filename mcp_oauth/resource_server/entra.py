"""Entra ID's dialect of JWT access tokens, v1.0 and v2.0 side by side.

- v1 tokens: `iss` https://sts.windows.net/<tenant>/, `aud` the app ID URI;
  v2 tokens: `iss` https://login.microsoftonline.com/<tenant>/v2.0, `aud` the client id.
  Either version may carry either audience.
- Its `sub` is pairwise (different per client), so the stable user is `oid@tid`; the user's
  name is in preferred_username, upn or unique_name; the client in `azp` (v2) or `appid` (v1).
"""

from __future__ import annotations

from typing import Any

from mcp_oauth.resource_server.jwt_claims import Expectations


def entra_issuers(tenant_id: str) -> tuple[str, str]:
    """A tenant's v1.0 and v2.0 token issuers; the v2.0 one is where its metadata lives."""
    return (
        f"https://sts.windows.net/{tenant_id}/",
        f"https://login.microsoftonline.com/{tenant_id}/v2.0",
    )


def entra_expectations(tenant_id: str, client_id: str, app_id_uri: str | None) -> Expectations:
    """Issuers: the tenant's v1 and v2; audiences: the app's client id and app ID URI."""
    return Expectations(
        issuers=entra_issuers(tenant_id),
        audiences=(client_id, app_id_uri or f"api://{client_id}"),
        entra=True,
    )


def entra_identity(claims: dict[str, Any]) -> tuple[str | None, str, dict[str, Any]]:
    """(subject `oid@tid`, client id, the claims with a `username` added) of an Entra token."""
    oid, tid = claims.get("oid"), claims.get("tid")
    subject = f"{oid}@{tid}" if oid and tid else claims.get("sub")
    client_id = claims.get("azp") or claims.get("appid") or ""
    name = next(
        (claims[k] for k in ("preferred_username", "upn", "unique_name") if claims.get(k)),
        None,
    )
    return (
        str(subject) if subject is not None else None,
        str(client_id),
        {**claims, "username": name} if name else claims,
    )
