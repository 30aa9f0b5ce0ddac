"""The consent page, the one both flows show (/authorize and /device): who asks, as whom,
for which resource and scopes, and whether the client's name is only self-chosen."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from mcp_oauth.provider.http_hardening import page_policy, redirect_source
from mcp_oauth.provider.identity import IDENTITY_SCOPES, released_claims
from mcp_oauth.provider.pages import client_description, csrf_token, templates
from mcp_oauth.provider.records import ClientRecord
from mcp_oauth.provider.scope_policy import OFFLINE_ACCESS, decide_scopes
from mcp_oauth.provider.users_file import Account, Resource

SCOPE_DESCRIPTIONS = {
    "read": "read your records and notes",
    "write": "create, change and delete your records and notes",
    "admin": "administer the server: see who holds access and revoke it",
    OFFLINE_ACCESS: "keep this access while you are away: it can renew it without asking you "
    "again, until you revoke it or the renewal expires",
}


def describe(scope: str, account: Account) -> str:
    """A scope in words; an identity scope names the claims it releases (OIDC Core §5.4)."""
    if scope in IDENTITY_SCOPES:
        return released_claims(scope, account)
    return SCOPE_DESCRIPTIONS.get(scope, "")


def consent_page(
    request: Request,
    *,
    client: ClientRecord,
    account: Account,
    requested: set[str],
    resource: Resource | None,
    params: list[tuple[str, str]],
    action: str,
    redirect_uri: str = "",
    user_code: str = "",
) -> Response:
    """Ask `account` to let `client` act for it. Only the scopes it can grant are offered;
    each one left out is listed with the reason (scope_policy.py: the account, the resource or
    the client's configuration); a client that registered itself or is identified by a
    metadata document is marked (`client_description`). The decision on a validated
    `redirect_uri` is redirected there, so the page's form-action allows that origin too
    (`redirect_source`). For a device (RFC 8628 §5.4, remote phishing) the page shows the user
    code to compare with the device's and says to go on only for a device in your hands."""
    decision = decide_scopes(requested, client, account, resource)
    redirect_target = redirect_source(redirect_uri)  # None for a device, which posts here
    return templates.TemplateResponse(
        request,
        "consent.html",
        {
            "title": "Allow access?",
            **client_description(client),
            "user_code": user_code,
            "username": account.username,
            "redirect_host": urlsplit(redirect_uri).netloc,
            "resource": resource.uri if resource else None,
            "scopes": [(s, describe(s, account)) for s in sorted(decision.granted)]
            if decision.grantable
            else [],
            "unavailable": [
                (scope, "; ".join(reasons)) for scope, reasons in sorted(decision.refused.items())
            ],
            "csrf_token": csrf_token(request),
            "params": params,
            "action": action,
        },
        headers={
            "Content-Security-Policy": page_policy(redirect_target)
            if redirect_target
            else page_policy()
        },
    )
