"""The consent page, the one both flows show (/authorize and /device): who asks, as whom,
for which resource and scopes, and whether the client's name is only self-chosen."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from mcp_oauth.provider.pages import csrf_token, templates
from mcp_oauth.provider.records import ClientRecord
from mcp_oauth.provider.users_file import Account, Resource, receivable_scopes

SCOPE_DESCRIPTIONS = {
    "read": "read your records and notes",
    "write": "create, change and delete your records and notes",
    "admin": "administer the server: see who holds access and revoke it",
}


def consent_page(
    request: Request,
    *,
    client: ClientRecord,
    account: Account,
    requested: set[str],
    resource: Resource | None,
    params: list[tuple[str, str]],
    action: str,
    redirect_host: str = "",
) -> Response:
    """Ask `account` to let `client` act for it. Only the scopes it may receive are offered
    (the rest are listed as unavailable). A client that registered itself (RFC 7591) is
    marked: anyone can register any name (RFC 7591 §5)."""
    offered = receivable_scopes(requested, account, resource)
    return templates.TemplateResponse(
        request,
        "consent.html",
        {
            "title": "Allow access?",
            "client_name": client.client_name,
            "unverified": not client.preregistered,
            "username": account.username,
            "redirect_host": redirect_host,
            "resource": resource.uri if resource else None,
            "scopes": [(s, SCOPE_DESCRIPTIONS.get(s, "")) for s in sorted(offered)],
            "unavailable": sorted(requested - offered),
            "csrf_token": csrf_token(request),
            "params": params,
            "action": action,
        },
    )
