"""What a user can grant a client, and why anything asked for is left out.

A user grants (requested) ∩ (what users.yaml allows the account) ∩ (what the resource
accepts). A client the operator registered in users.yaml is also capped by the scope
configured there. A client that registered itself (RFC 7591) or is identified by its metadata
document registered the scope it wants first, not a limit: MCP clients register with the
scope of their first challenge and ask for more later (step-up), so that scope is only the
default for a request that names none (RFC 6749 §3.3).

`offline_access` (SEP-2207) asks for a refresh token: it belongs to no resource and no
account; a client registered for the refresh_token grant gets it, with consent. The OpenID
Connect identity scopes (`openid`, `profile`, `email`, identity.py) release claims about the
person, not access to a resource: they too belong to no resource and no account allowance,
only an operator's client is capped by its configured scope.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcp_oauth.common.scopes import scope_set
from mcp_oauth.provider.identity import IDENTITY_SCOPES
from mcp_oauth.provider.records import ClientRecord
from mcp_oauth.provider.users_file import Account, Resource

OFFLINE_ACCESS = "offline_access"

# Why a scope asked for is left out, as the consent page and error descriptions say it.
BY_ACCOUNT = "your account may not grant it"
BY_RESOURCE = "the resource does not accept it"
BY_CLIENT_CONFIGURATION = "this server's operator has not configured this application for it"
BY_NO_REFRESH_GRANT = "this application is not registered for refresh tokens (grant_types)"


@dataclass(frozen=True)
class ScopeDecision:
    granted: frozenset[str]
    refused: dict[str, tuple[str, ...]] = field(default_factory=dict)  # scope → reasons

    @property
    def grantable(self) -> bool:
        """Something to grant besides offline_access, which alone gives access to nothing
        (an identity scope alone is something: the sign-in of an OpenID client)."""
        return bool(self.granted - {OFFLINE_ACCESS})

    def explanation(self) -> str:
        """One sentence per reason, naming its scopes: the text of an error or a refusal."""
        by_reason: dict[str, list[str]] = {}
        for scope in sorted(self.refused):
            for reason in self.refused[scope]:
                by_reason.setdefault(reason, []).append(scope)
        return (
            " ".join(f"{', '.join(scopes)}: {reason}." for reason, scopes in by_reason.items())
            or "No access was asked for."
        )


def requested_scopes(client: ClientRecord, scope: str | None) -> set[str]:
    """RFC 6749 §3.3: the scopes requested, or the client's registered scope when it names
    none."""
    return scope_set(scope) or scope_set(client.metadata.get("scope"))


def decide_scopes(
    requested: set[str], client: ClientRecord, account: Account, resource: Resource | None
) -> ScopeDecision:
    """requested ∩ account ∩ resource (∩ the configured scope of an operator's client), each
    scope left out with every reason that applies."""
    ceiling = client.scope_ceiling
    refused: dict[str, tuple[str, ...]] = {}
    for scope in requested:
        if scope == OFFLINE_ACCESS:
            reasons = () if client.check_grant_type("refresh_token") else (BY_NO_REFRESH_GRANT,)
        elif scope in IDENTITY_SCOPES:
            excluded = ceiling is not None and scope not in ceiling
            reasons = (BY_CLIENT_CONFIGURATION,) if excluded else ()
        else:
            reasons = tuple(
                reason
                for reason, excluded in (
                    (BY_CLIENT_CONFIGURATION, ceiling is not None and scope not in ceiling),
                    (BY_ACCOUNT, scope not in account.scopes),
                    (BY_RESOURCE, resource is not None and scope not in resource.scopes),
                )
                if excluded
            )
        if reasons:
            refused[scope] = reasons
    return ScopeDecision(frozenset(requested - refused.keys()), refused)
