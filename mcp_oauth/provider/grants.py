"""The grant types the provider supports, as small Authlib subclasses (oauth_provider.py
registers them).

Each grant only fills in the storage hooks Authlib asks for, plus one rule Authlib leaves to
us: the code, the refresh token or the device code is spent in the same database
transaction that stores the new tokens (storage/), so replays and races fail. Protocol
checks are in checks.py; tokens are made by the TokenMinter.

A grant with RUNS_ON_EVENT_LOOP is run on the event loop (sync_on_loop.py) rather than in a
worker thread: every storage call it makes reads inline (Database.read_first), awaits its
commit (Database.grouped, Database.transaction) or leaves the loop itself (a client metadata
document's fetch), so none blocks; Database.write refuses to run there. The device grant
polls with a write transaction of its own and stays in a worker thread.
"""

from __future__ import annotations

import logging
import time

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8628 import DeviceCodeGrant as AuthlibDeviceCodeGrant

from mcp_oauth.common.scopes import scope_set, scope_str
from mcp_oauth.provider.checks import (
    ACCESS_TOKEN_TYPE,
    check_exchange_target,
    check_exchange_token_types,
    check_pkce_s256,
    check_resource_is_bound,
    check_subject_not_exchanged,
    check_subject_token,
    check_subject_token_is_for_client,
    exchanged_scope,
    requested_resource,
)
from mcp_oauth.provider.identity import IDENTITY_SCOPES, OPENID
from mcp_oauth.provider.records import (
    ANY_CLIENT_AUTH,
    CONFIDENTIAL_AUTH,
    CodeRecord,
    DeviceRecord,
    TokenFamily,
    TokenRecord,
)
from mcp_oauth.provider.scope_policy import OFFLINE_ACCESS, decide_scopes, requested_scopes

log = logging.getLogger("oauth_provider")

AUTHORIZATION_CODE_LIFETIME = 300


def refresh_token_granted(client, scope: str) -> bool:
    """Whether a grant of `scope` gets a refresh token: only for a client registered for the
    refresh_token grant, and, once the grant holds `openid`, only when `offline_access` was
    requested and granted too (OIDC Core §11, SEP-2207). A grant without openid gets one as it
    always did (MCP clients that never ask for openid)."""
    granted = scope_set(scope)
    return client.check_grant_type("refresh_token") and (
        OPENID not in granted or OFFLINE_ACCESS in granted
    )


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 for every client (checks.check_pkce_s256), verified by Authlib."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri):
        check_pkce_s256(grant.request.payload.data)
        super().validate_code_challenge(grant, redirect_uri)


class ResourceIndicator:
    """Authorization-endpoint extension: the RFC 8707 resource is validated and kept for the
    code."""

    def __call__(self, grant):
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    @staticmethod
    def validate(grant, redirect_uri):
        grant.request.resource = requested_resource(grant.request.payload, grant.server.resources)


class TokenGrant:
    """What every grant here shares: finding the request's resource among the known ones."""

    def requested_resource(self) -> str | None:
        return requested_resource(self.request.payload, self.server.resources)

    def bound_resource(self, bound: str | None) -> str | None:
        """RFC 8707 §2.2: the resource a code or refresh token is bound to, which a
        `resource` at the token endpoint may only repeat."""
        check_resource_is_bound(self.requested_resource(), bound)
        return bound


class AuthorizationCodeGrant(TokenGrant, grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ANY_CLIENT_AUTH
    RUNS_ON_EVENT_LOOP = True

    def save_authorization_code(self, code: str, request) -> None:
        account = request.user
        decision = decide_scopes(
            requested_scopes(request.client, request.payload.scope),
            request.client,
            account,
            self.server.resources.get(request.resource or ""),
        )
        if not decision.grantable:
            raise InvalidScopeError(
                f"nothing requested can be granted to {account.username}: "
                + decision.explanation(),
                redirect_uri=request.payload.redirect_uri,
                state=request.payload.state,
            )
        self.server.store.codes.save(
            code,
            CodeRecord(
                code_hash="",
                client_id=request.client.client_id,
                username=account.username,
                redirect_uri=request.payload.redirect_uri,
                scope=scope_str(decision.granted),
                resource=request.resource,
                code_challenge=request.payload.data["code_challenge"],
                code_challenge_method="S256",
                # when the person signed in (authorize_page.py), for the ID token's auth_time
                auth_time=getattr(request, "auth_time", None) or int(time.time()),
                expires_at=int(time.time()) + AUTHORIZATION_CODE_LIFETIME,
                nonce=request.payload.data.get("nonce"),
            ),
        )

    def query_authorization_code(self, code: str, client) -> CodeRecord | None:
        found = self.server.store.codes.find(code)
        if found is None:
            return None
        record, used = found
        if used:
            log.warning("authorization code replayed by %s: revoking its tokens", client.client_id)
            self.server.store.codes.revoke_tokens_of(record)
            return None
        if record.client_id != client.client_id or record.is_expired():
            return None
        return record

    def authenticate_user(self, authorization_code: CodeRecord):
        return self.server.accounts.get(authorization_code.username)

    @hooked  # identity.OpenIDCode adds the ID token to the answer
    def create_token_response(self):
        code: CodeRecord = self.request.authorization_code
        account = self.authenticate_user(code)
        if account is None:
            raise InvalidGrantError("the user of this code no longer exists")
        self.request.user = account
        resource = self.bound_resource(code.resource)
        family = TokenFamily(self.client.client_id, account.username, code.scope, resource)
        body, issued = self.server.minter.mint(
            family, with_refresh=refresh_token_granted(self.client, code.scope)
        )
        if not self.server.store.codes.redeem(code, family, issued):
            self.server.store.codes.revoke_tokens_of(code)
            raise InvalidGrantError("authorization code was already used")
        return 200, body, self.TOKEN_RESPONSE_HEADER


class RefreshTokenGrant(TokenGrant, grants.RefreshTokenGrant):
    """Rotating refresh tokens: every use returns a new one; a spent one revokes the family."""

    TOKEN_ENDPOINT_AUTH_METHODS = ANY_CLIENT_AUTH
    INCLUDE_NEW_REFRESH_TOKEN = True
    RUNS_ON_EVENT_LOOP = True

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        token = self.server.store.tokens.find(refresh_token, "refresh")
        if token is None or token.is_expired():
            return None
        self.request.replayed_answer = None
        if token.is_revoked():
            if token.used_at is not None:
                self.request.replayed_answer = self._answer_again(refresh_token)
                if self.request.replayed_answer is not None:
                    return token
                self._revoke_replayed(token)
            return None
        return token

    def _answer_again(self, refresh_token: str) -> dict | None:
        """Within the refresh grace, the same client retrying a refresh whose answer it lost
        gets that answer again (storage/refresh_replies.py); otherwise None."""
        if self.server.minter.lifetimes.refresh_grace <= 0:
            return None
        return self.server.store.tokens.replies.replay(refresh_token, self.request.client.client_id)

    def _revoke_replayed(self, token: TokenRecord) -> None:
        log.warning("refresh token replayed: revoking its family %s", token.family_id)
        self.server.store.tokens.revoke_family(token.family_id, "refresh token replayed", "policy")

    def authenticate_user(self, refresh_token: TokenRecord):
        return self.server.accounts.get(refresh_token.username)

    @hooked  # identity.OpenIDRefresh adds a new ID token to the answer of an openid grant
    def create_token_response(self):
        old: TokenRecord = self.request.refresh_token
        account = self.authenticate_user(old)
        if account is None:
            raise InvalidGrantError("the user of this refresh token no longer exists")
        self.request.user = account
        if self.request.replayed_answer is not None:
            return 200, self.request.replayed_answer, self.TOKEN_RESPONSE_HEADER
        resource = self.bound_resource(old.resource)
        # The scope may narrow, never widen (checked by Authlib against the refresh token's
        # scope); the user's current allowance in users.yaml applies at every refresh
        # (offline_access is no account's to lose: it is the refresh itself; nor are the
        # identity scopes, scope_policy.py).
        allowed = account.scopes | {OFFLINE_ACCESS} | IDENTITY_SCOPES
        scope = scope_str(scope_set(self.request.payload.scope or old.scope) & allowed)
        family = TokenFamily(
            self.client.client_id, account.username, scope, resource, family_id=old.family_id
        )
        body, issued = self.server.minter.mint(family, with_refresh=True, refresh_scope=old.scope)
        presented = self.request.form["refresh_token"]
        grace = self.server.minter.lifetimes.refresh_grace
        if self.server.store.tokens.rotate_refresh_token(
            old, family, issued, body, presented=presented, grace=grace
        ):
            return 200, body, self.TOKEN_RESPONSE_HEADER
        # Lost a race with another rotation of this token: the same answer if the grace
        # allows it, otherwise a replay.
        again = self._answer_again(presented)
        if again is not None:
            return 200, again, self.TOKEN_RESPONSE_HEADER
        self._revoke_replayed(old)
        raise InvalidGrantError("refresh token was already used")


class ClientCredentialsGrant(TokenGrant, grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH
    RUNS_ON_EVENT_LOOP = True

    def create_token_response(self):
        client = self.client
        scope = client.get_allowed_scope(self.request.payload.scope)
        family = TokenFamily(client.client_id, None, scope, self.requested_resource())
        body, issued = self.server.minter.mint(family, with_refresh=False)
        self.server.store.tokens.save_family(family, issued)
        return 200, body, self.TOKEN_RESPONSE_HEADER


class TokenExchangeGrant(TokenGrant, grants.BaseGrant, grants.TokenEndpointMixin):
    """RFC 8693 token exchange, for the On-Behalf-Of pattern: a resource server trades the
    user's token it received for a token to a downstream API.

    The new token stays inside the user's grant: its subject is the user, `act` names the
    exchanging client (earlier actors nested inside), its scope is never wider and its
    lifetime never longer than the subject token's, and it joins the subject token's family,
    so it is revoked with the subject token or the family. Only the clients users.yaml gives
    an `exchange:` entry may exchange, only tokens issued for a resource they serve, and only
    for the audiences listed there."""

    GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH
    RUNS_ON_EVENT_LOOP = True

    def validate_token_request(self):
        client = self.authenticate_token_endpoint_client()
        policy = client.exchange_policy
        if not (client.check_grant_type(self.GRANT_TYPE) and policy):
            raise UnauthorizedClientError("this client may not exchange tokens")
        form = self.request.payload.data
        check_exchange_token_types(form)
        subject = check_subject_token(
            self.server.store.tokens.find(form.get("subject_token") or "", "access")
        )
        check_subject_token_is_for_client(subject, policy.serves)
        check_subject_not_exchanged(subject, policy.accepts_exchanged_tokens)
        target = check_exchange_target(
            form.get("audience") or self.requested_resource(),
            self.server.resources,
            policy.audiences,
        )
        scope = exchanged_scope(
            self.request.payload.scope,
            subject.scope,
            self.server.resources[target].scopes,
            target,
        )
        self.request.client = client
        self.request.exchange = (subject, target, scope)

    def create_token_response(self):
        subject, target, scope = self.request.exchange
        client_id = self.client.client_id
        actors = (client_id, *subject.actors)
        family = TokenFamily(
            client_id, subject.username, scope, target, client_id, family_id=subject.family_id
        )
        body, issued = self.server.minter.mint(
            family, with_refresh=False, actors=actors, expires_at_most=subject.expires_at
        )
        if not self.server.store.tokens.save_exchanged(subject, family, issued, actors):
            raise InvalidGrantError("subject_token is not an active access token")
        body["issued_token_type"] = ACCESS_TOKEN_TYPE
        return 200, body, self.TOKEN_RESPONSE_HEADER


class DeviceCodeGrant(AuthlibDeviceCodeGrant):
    """RFC 8628 §3.4–3.5: pending, slow_down (+5 s), access_denied, expired_token; one use."""

    TOKEN_ENDPOINT_AUTH_METHODS = ANY_CLIENT_AUTH

    def query_device_credential(self, device_code: str) -> DeviceRecord:
        polled = self.server.store.devices.poll(device_code)
        if polled is None:
            raise InvalidGrantError("unknown device_code")
        record, self.polled_too_fast = polled
        if record.used_at is not None:
            raise InvalidGrantError("device_code was already used")
        self.device_record = record
        return record

    def query_user_grant(self, user_code: str):
        """Authlib's name for the user's decision on the device: (account, approved)."""
        record: DeviceRecord = self.device_record
        if record.decision is None:
            return None
        return self.server.accounts.get(record.username), record.decision == "approved"

    def should_slow_down(self, credential: DeviceRecord) -> bool:
        return self.polled_too_fast

    def create_token_response(self):
        record: DeviceRecord = self.request.credential
        account = self.request.user
        if account is None:
            raise InvalidGrantError("the user who approved this device no longer exists")
        family = TokenFamily(
            self.client.client_id, account.username, record.get_scope(), record.resource
        )
        body, issued = self.server.minter.mint(
            family, with_refresh=self.client.check_grant_type("refresh_token")
        )
        if not self.server.store.devices.redeem(record, family, issued):
            raise InvalidGrantError("device_code was already used")
        return 200, body, self.TOKEN_RESPONSE_HEADER
