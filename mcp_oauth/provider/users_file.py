"""users.yaml: the accounts (argon2 hashes, the scopes each may receive, and the optional
profile claims name, email and email_verified), the pre-registered clients and the resources
(RFC 8707) the provider issues tokens for."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from authlib.oauth2.rfc6749.errors import OAuth2Error

from mcp_oauth.common.users_yaml import UsersFileError, account_scopes, read_users_yaml
from mcp_oauth.provider.client_checks import check_post_logout_redirect_uris

log = logging.getLogger("oauth_provider")
DEFAULT_SCOPES = ("read", "write", "admin")  # when users.yaml describes no resources


@dataclass(frozen=True)
class Account:
    username: str
    password_hash: str
    scopes: frozenset[str]
    name: str
    # Optional profile claims released to OpenID clients (identity.py, OIDC Core §5.1).
    email: str | None = None
    email_verified: bool = False


STARTED_RESOURCES = "OAUTH_RESOURCES"  # in `exchange.serves`: the resources added at start


@dataclass(frozen=True)
class ExchangePolicy:
    """What a client may do with token exchange (RFC 8693), from its `exchange:` entry:
    `serves` are the resources it is (a subject token must have been issued for one of them),
    `audiences` the downstream resources it may ask for, and `accepts_exchanged_tokens`
    whether a token that is itself the product of an exchange may be exchanged again."""

    serves: frozenset[str]
    audiences: frozenset[str]
    accepts_exchanged_tokens: bool = False

    def as_metadata(self) -> dict:
        return {
            "serves": sorted(self.serves),
            "audiences": sorted(self.audiences),
            "accepts_exchanged_tokens": self.accepts_exchanged_tokens,
        }

    @classmethod
    def from_metadata(cls, data: dict) -> ExchangePolicy:
        return cls(
            frozenset(data["serves"]),
            frozenset(data["audiences"]),
            bool(data.get("accepts_exchanged_tokens", False)),
        )


@dataclass(frozen=True)
class ClientConfig:
    """A client registered in users.yaml rather than through /register."""

    client_id: str
    client_name: str
    redirect_uris: list[str]
    grant_types: list[str]
    scope: str
    token_endpoint_auth_method: str
    client_secret: str | None = None
    resource_server: bool = False
    post_logout_redirect_uris: list[str] = field(default_factory=list)  # RP-Initiated Logout
    exchange: ExchangePolicy | None = None

    @property
    def may_exchange_tokens(self) -> bool:
        return self.exchange is not None


@dataclass(frozen=True)
class Resource:
    uri: str
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class UsersFile:
    accounts: dict[str, Account]
    clients: list[ClientConfig]
    resources: dict[str, Resource] = field(default_factory=dict)
    scopes: list[str] = field(default_factory=lambda: list(DEFAULT_SCOPES))
    """The scope catalogue (scopes_supported): every scope a resource accepts, in file order."""


def _secret_for(entry: dict, path: Path) -> str | None:
    """A client secret comes from the environment variable the file names, or its marked
    development default (with a warning), never from the file in plain text otherwise."""
    env_name = entry.get("client_secret_env")
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value:
        return value
    default = entry.get("development_default_secret")
    if not default:
        raise UsersFileError(f"{path}: client {entry['client_id']} needs ${env_name} to be set")
    log.warning(
        "%s is not set: client %s uses the development default secret; set %s in production",
        env_name,
        entry["client_id"],
        env_name,
    )
    return default


def _exchange_policy(
    entry: dict, path: Path, issuer: str, started: list[str]
) -> ExchangePolicy | None:
    """A client's `exchange:` entry. `OAUTH_RESOURCES` in `serves` stands for the resources
    added at start (--resource, OAUTH_RESOURCES); a path such as `/userinfo` is this
    provider's own URL. The old `may_exchange_tokens: true` said nothing about which tokens
    and targets, so it is refused with the fix."""
    if "may_exchange_tokens" in entry:
        raise UsersFileError(
            f"{path}: client {entry['client_id']}: may_exchange_tokens is replaced by "
            "exchange: {serves: [resource URIs this client is], audiences: [URIs it may ask for]}"
        )
    raw = entry.get("exchange")
    if raw is None:
        return None

    def uris(key: str) -> frozenset[str]:
        listed = raw.get(key) or []
        if not isinstance(listed, list):
            raise TypeError(f"exchange.{key} must be a list")
        expanded = [*started] if STARTED_RESOURCES in listed else []
        expanded += [issuer + uri if uri.startswith("/") else uri for uri in listed]
        return frozenset(uri for uri in expanded if uri != STARTED_RESOURCES)

    return ExchangePolicy(
        uris("serves"), uris("audiences"), raw.get("accepts_exchanged_tokens") is True
    )


def scope_catalogue(resources: list[dict]) -> list[str]:
    """Every scope the resources in users.yaml accept, in the order the file lists them."""
    listed = (scope for entry in resources for scope in entry.get("scopes", []))
    return list(dict.fromkeys(listed)) or list(DEFAULT_SCOPES)


def load_users_file(path: Path, extra_resources: list[str] = (), issuer: str = "") -> UsersFile:
    raw = read_users_yaml(path)
    try:
        scopes = account_scopes(raw)
        accounts = {
            name: Account(
                username=name,
                password_hash=entry["password_hash"],
                scopes=scopes[name],
                name=entry.get("name", name),
                email=entry.get("email"),
                email_verified=entry.get("email_verified") is True,
            )
            for name, entry in raw["users"].items()
        }
        clients = [
            ClientConfig(
                client_id=entry["client_id"],
                client_name=entry.get("client_name", entry["client_id"]),
                redirect_uris=list(entry.get("redirect_uris", [])),
                grant_types=list(entry.get("grant_types", ["authorization_code"])),
                scope=entry.get("scope", ""),
                token_endpoint_auth_method=entry.get("token_endpoint_auth_method", "none"),
                client_secret=_secret_for(entry, path),
                resource_server=bool(entry.get("resource_server", False)),
                exchange=_exchange_policy(entry, path, issuer, list(extra_resources)),
                post_logout_redirect_uris=entry.get("post_logout_redirect_uris", []),
            )
            for entry in raw.get("clients", [])
        ]
        resources = {
            entry["uri"]: Resource(
                uri=entry["uri"],
                name=entry.get("name", entry["uri"]),
                scopes=frozenset(entry.get("scopes", [])),
            )
            for entry in raw.get("resources", [])
        }
        catalogue = scope_catalogue(raw.get("resources", []))
    except (KeyError, TypeError, AttributeError) as exc:
        raise UsersFileError(f"users file {path} is malformed near {exc!s}") from exc
    for uri in extra_resources:
        resources.setdefault(uri, Resource(uri=uri, name=uri, scopes=frozenset(catalogue)))
    for client in clients:
        try:
            check_post_logout_redirect_uris(client.post_logout_redirect_uris)
        except OAuth2Error as exc:
            raise UsersFileError(f"{path}: client {client.client_id}: {exc.description}") from exc
    for account in accounts.values():
        if not account.password_hash.startswith("$argon2"):
            raise UsersFileError(
                f"{path}: user {account.username} has no argon2 password_hash; "
                "make one with: python oauth_provider.py hash-password"
            )
    return UsersFile(accounts=accounts, clients=clients, resources=resources, scopes=catalogue)
