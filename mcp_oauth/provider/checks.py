"""Protocol checks on a request's parameters, one small function per rule.

Each check raises the OAuth error its RFC names, with a description that says exactly what
was wrong, or returns what it validated. They are composed where they are used: the request
reader (oauth_request.py), the grants (grants.py) and the endpoints (endpoints.py). What a
client may register, and where it may be sent, is checked in client_checks.py.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from urllib.parse import unquote

from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
)
from authlib.oauth2.rfc7591.errors import InvalidClientMetadataError, InvalidRedirectURIError

from mcp_oauth.common.scopes import scope_set, scope_str
from mcp_oauth.common.text import printable
from mcp_oauth.provider.records import TokenRecord

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
REPEATABLE_PARAMETERS = {"resource"}  # RFC 8707 §2 allows several; we then refuse >1 below
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the requested resource is unknown or not allowed."""

    error = "invalid_target"


def check_parameter_values(items: list[tuple[str, object]]) -> None:
    """Every parameter is text without control characters (RFC 6749 Appendix A: parameter
    values are printable characters; a file upload or a raw newline is not a value)."""
    for key, value in items:
        if not isinstance(value, str):
            raise InvalidRequestError(f"parameter {printable(key)} must be a string")
        if CONTROL_CHARACTERS.search(key) or CONTROL_CHARACTERS.search(value):
            raise InvalidRequestError(f"parameter {printable(key)} contains control characters")


def check_no_repeated_parameters(items: list[tuple[str, str]]) -> None:
    """RFC 6749 §3.1 and §3.2: parameters MUST NOT be included more than once (RFC 8707's
    `resource` excepted)."""
    seen: set[str] = set()
    for key, _ in items:
        if key in seen and key not in REPEATABLE_PARAMETERS:
            raise InvalidRequestError(f"parameter {printable(key)} was sent more than once")
        seen.add(key)


def basic_credentials(headers) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1 with RFC 7617: Basic credentials are base64 of UTF-8 `id:secret`, each
    form-encoded. The client id and secret they carry, or None when the request has no Basic
    credentials; ones that do not decode are invalid_client, not a crash. Parsed once per
    request: client authentication reads them from it (client_secret_basic below)."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = None
    if decoded is None or ":" not in decoded or CONTROL_CHARACTERS.search(unquote(decoded)):
        raise InvalidClientError(status_code=401, description="malformed Basic credentials")
    client_id, _, secret = decoded.partition(":")
    return unquote(client_id), unquote(secret)


def client_secret_basic(query_client, request):
    """RFC 6749 §2.3.1, client_secret_basic: Authlib's method, reading the credentials the
    request was built with (basic_credentials) instead of parsing the header again. An unknown
    client is invalid_client with 401, as Authlib's; a wrong secret is no client (Authlib then
    tries the endpoint's other methods)."""
    client_id, secret = request.basic_credentials or ("", "")
    if not (client_id and secret):
        return None
    client = query_client(client_id)
    if not client:
        raise InvalidClientError(
            status_code=401, description="The client does not exist on this server."
        )
    return client if client.check_client_secret(secret) else None


def check_token_parameter(form: dict) -> str:
    """RFC 7662 §2.1 and RFC 7009 §2.1: `token` is REQUIRED. The optional token_type_hint
    is ignored: a token is found by its hash whatever its type, as both RFCs allow."""
    if "token" not in form:
        raise InvalidRequestError("missing token")
    return form["token"]


def token_is_active(token: TokenRecord | None) -> bool:
    """RFC 7662 §2.2: a token that is unknown, expired, revoked, or (a refresh token)
    already spent is answered as exactly {"active": false}."""
    return token is not None and not token.is_expired() and not token.is_revoked()


def check_token_belongs_to_client(token: TokenRecord, client) -> None:
    """RFC 7009 §2.1: the server verifies that the token was issued to the client asking
    for its revocation; if not, the request is refused (invalid_grant, as Authlib answers)."""
    if not token.check_client(client):
        raise InvalidGrantError()


def check_pkce_s256(data: dict) -> None:
    """RFC 7636 §4.3 as RFC 9700 §2.1.1 asks: every authorization request carries a
    code_challenge made with S256; no challenge, or `plain`, is refused."""
    if not data.get("code_challenge"):
        raise InvalidRequestError("code_challenge is required (PKCE with S256)")
    if data.get("code_challenge_method") != "S256":
        raise InvalidRequestError("code_challenge_method must be S256")


def requested_resource(payload, known: dict) -> str | None:
    """RFC 8707 §2: the `resource` parameter, at most one here, and one this provider knows."""
    values = payload.datalist.get("resource", [])
    if len(values) > 1:
        raise InvalidTargetError("only one resource may be requested")
    if not values:
        return None
    if values[0] not in known:
        raise InvalidTargetError(f"unknown resource: {printable(values[0])}")
    return values[0]


def check_resource_is_bound(requested: str | None, bound: str | None) -> None:
    """RFC 8707 §2.2: at the token endpoint a `resource` may only repeat the one the code or
    refresh token was issued for."""
    if requested is not None and requested != bound:
        raise InvalidTargetError("resource differs from the one this grant was issued for")


def check_scope_known(scope: str | None, supported: list[str]) -> None:
    """RFC 6749 §3.3: a scope the server does not define is invalid_scope."""
    unknown = scope_set(scope) - set(supported)
    if unknown:
        raise InvalidScopeError(f"unknown scope: {printable(scope_str(unknown))}")


# -- registration size (RFC 7591) -------------------------------------------------------------

MAX_REGISTRATION_BYTES = 8 * 1024  # the whole metadata document, as JSON
MAX_REDIRECT_URIS = 10
MAX_REDIRECT_URI_LENGTH = 2048


def check_registration_size(data: dict) -> None:
    """RFC 7591 §3.2.2: metadata this server will not store is invalid_client_metadata (or
    invalid_redirect_uri). Open registration must not let one request store much: the
    document is at most MAX_REGISTRATION_BYTES, with at most MAX_REDIRECT_URIS redirect URIs
    of at most MAX_REDIRECT_URI_LENGTH characters each."""
    size = len(json.dumps(data, ensure_ascii=False).encode())
    if size > MAX_REGISTRATION_BYTES:
        raise InvalidClientMetadataError(
            f"client metadata is {size} bytes; at most {MAX_REGISTRATION_BYTES} are accepted"
        )
    uris = data.get("redirect_uris")
    if isinstance(uris, list):
        if len(uris) > MAX_REDIRECT_URIS:
            raise InvalidRedirectURIError(f"at most {MAX_REDIRECT_URIS} redirect_uris")
        if any(isinstance(uri, str) and len(uri) > MAX_REDIRECT_URI_LENGTH for uri in uris):
            raise InvalidRedirectURIError(
                f"a redirect URI may have at most {MAX_REDIRECT_URI_LENGTH} characters"
            )


# -- token exchange (RFC 8693) ---------------------------------------------------------------


def check_exchange_token_types(form: dict) -> None:
    """RFC 8693 §2.1: this server exchanges an access token for an access token, and the
    client itself is the actor (no actor_token)."""
    if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
        raise InvalidRequestError(f"subject_token_type must be {ACCESS_TOKEN_TYPE}")
    if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
        raise InvalidRequestError(f"requested_token_type must be {ACCESS_TOKEN_TYPE}")
    if "actor_token" in form:
        raise InvalidRequestError("actor_token is not supported; the client is the actor")


def check_subject_token(subject: TokenRecord | None) -> TokenRecord:
    """RFC 8693 §2.2.2: a subject_token that is not an active user's access token is
    invalid_grant (there must be a user to act on behalf of; a refresh token is never found
    as one)."""
    if subject is None or subject.is_expired() or subject.is_revoked():
        raise InvalidGrantError("subject_token is not an active access token")
    if subject.username is None:
        raise InvalidGrantError("subject_token has no user to act on behalf of")
    return subject


def check_subject_token_is_for_client(subject: TokenRecord, serves: frozenset[str]) -> None:
    """RFC 8693 §1.1 and §2.2.2 (unacceptable by policy), RFC 8707 §2: a client exchanges
    only tokens issued for a resource it is (their audience), so it cannot launder tokens
    that other clients or other resources received."""
    if subject.resource not in serves:
        raise InvalidGrantError("subject_token was not issued for a resource this client serves")


def check_subject_not_exchanged(subject: TokenRecord, accepts_exchanged: bool) -> None:
    """RFC 8693 §4.1 allows delegation chains; this server refuses a token that is itself the
    product of an exchange unless the client is configured to accept one, so each hop of a
    chain is a decision made in users.yaml (and its lifetime stays capped either way)."""
    if subject.actors and not accepts_exchanged:
        raise InvalidGrantError(
            "subject_token came from a token exchange; it is not exchanged again"
        )


def check_exchange_target(target: str | None, known: dict, allowed: frozenset[str]) -> str:
    """RFC 8693 §2.1 with §2.2.2: `audience` or `resource` names a known downstream API that
    this client may ask for (users.yaml `exchange.audiences`), otherwise invalid_target."""
    if target not in known:
        raise InvalidTargetError(f"unknown audience or resource: {printable(target)}")
    if target not in allowed:
        raise InvalidTargetError(f"this client may not ask for tokens for {printable(target)}")
    return target


def exchanged_scope(requested: str | None, subject_scope: str, target_scopes, target: str) -> str:
    """RFC 8693 §2.1 and §5: the new token's scope is never wider than the subject token's,
    and only what the target accepts; nothing left is invalid_scope."""
    wanted = scope_set(requested)
    if not wanted <= scope_set(subject_scope):
        raise InvalidScopeError("the requested scope is wider than the subject token's")
    scope = (wanted or scope_set(subject_scope)) & target_scopes
    if not scope:
        raise InvalidScopeError(f"no scope of the subject token applies to {target}")
    return scope_str(scope)
