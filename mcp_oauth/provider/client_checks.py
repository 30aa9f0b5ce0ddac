"""Protocol checks about clients, one small function per rule: which redirect URIs a client
may register and use, whether an error may be redirected to it, and the metadata it may
register (RFC 7591). Request parameters are checked in checks.py."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import urlsplit

from authlib.oauth2.claims import BaseClaims
from authlib.oauth2.rfc6749.errors import OAuth2Error

from mcp_oauth.common.scopes import scope_set, scope_str
from mcp_oauth.common.text import printable

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
URI_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
SCHEME_AND_AUTHORITY = re.compile(r"[^:]*://[^/?#]*")
LOOPBACK_PORT = re.compile(r"[1-9][0-9]{0,4}")
MAX_CLIENT_NAME = 200
# Registration metadata (RFC 7591 §2) this server reads, and the JSON type each must have.
METADATA_TYPES: dict[str, type] = {
    "redirect_uris": list,
    "post_logout_redirect_uris": list,
    "grant_types": list,
    "response_types": list,
    "contacts": list,
    "token_endpoint_auth_method": str,
    "client_name": str,
    "client_uri": str,
    "logo_uri": str,
    "scope": str,
    "tos_uri": str,
    "policy_uri": str,
    "jwks_uri": str,
    "software_id": str,
    "software_version": str,
    "jwks": dict,
}
JSON_TYPE_NAMES = {list: "array", str: "string", dict: "object"}


class InvalidRedirectUri(OAuth2Error):
    """RFC 7591 §3.2.2."""

    error = "invalid_redirect_uri"


class InvalidClientMetadata(OAuth2Error):
    """RFC 7591 §3.2.2."""

    error = "invalid_client_metadata"


# -- redirect URIs ---------------------------------------------------------------------------


def is_loopback_redirect(uri: str) -> bool:
    """RFC 8252 §7.3: an http redirect to the device itself (a native app's local listener)."""
    parts = urlsplit(uri)
    return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS


def redirect_uri_matches(registered: str, requested: str) -> bool:
    """Exact string match (RFC 9700 §4.1.3), except that a registered loopback redirect URI
    without a port matches the same URI with any port (RFC 8252 §7.3): the requested URI must
    be the registered string with `:port` (1-65535, no leading zero) inserted after the host,
    and nothing else may differ, not the case of the scheme, nor an empty query or fragment."""
    if requested == registered:
        return True
    if not is_loopback_redirect(registered) or urlsplit(registered).port is not None:
        return False
    authority_end = SCHEME_AND_AUTHORITY.match(registered).end()
    before, after = registered[:authority_end], registered[authority_end:]
    if not (requested.startswith(before + ":") and requested.endswith(after)):
        return False
    port = requested[len(before) + 1 : len(requested) - len(after)]
    return LOOPBACK_PORT.fullmatch(port) is not None and int(port) <= 65535


def redirect_uri_problem(uri: str) -> str | None:
    """Why a redirect URI may not be registered (RFC 8252 §7.3, RFC 9700 §4.1), or None."""
    if not URI_CHARACTERS.fullmatch(uri):
        return "not a valid URI (RFC 3986)"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "not a valid URI"
    if parts.fragment or "#" in uri:
        return "must not contain a fragment"
    if parts.username or parts.password:
        return "must not contain user information"
    if parts.scheme == "https" and parts.hostname:
        return None
    if is_loopback_redirect(uri):
        return None
    return "must use https, or http on a loopback address (RFC 8252 section 7.3)"


def may_redirect_error(client, redirect_uri: str | None) -> bool:
    """RFC 9700 §4.11.2: an error goes back without the user's action only to a
    pre-registered client or a loopback redirect URI; anyone can register a client, and
    redirecting its errors would make this server an open redirector. (Authlib sets
    redirect_uri on an error only once it was verified, RFC 6749 §4.1.2.1.)"""
    if not redirect_uri:
        return False
    return (client is not None and client.preregistered) or is_loopback_redirect(redirect_uri)


# -- registration metadata (RFC 7591) --------------------------------------------------------


def check_metadata_types(data: dict) -> None:
    """RFC 7591 §2: each metadata value has its JSON type (Authlib's claim checks assume
    them)."""
    for name, expected in METADATA_TYPES.items():
        if name not in data:
            continue
        value = data[name]
        if not isinstance(value, expected):
            raise InvalidClientMetadata(f"{name} must be a JSON {JSON_TYPE_NAMES[expected]}")
        if expected is list and not all(isinstance(item, str) for item in value):
            raise InvalidClientMetadata(f"{name} must be a list of strings")


def check_registered_auth_method(method: str, supported: list[str]) -> None:
    """RFC 7591 §2: token_endpoint_auth_method is one this server supports."""
    if method not in supported:
        raise InvalidClientMetadata(f"token_endpoint_auth_method must be one of {supported}")


def check_registered_grant_types(grant_types: list[str], allowed: set[str]) -> None:
    """RFC 7591 §2: a self-registered client may only use the grant types open to it."""
    if not set(grant_types) <= allowed:
        raise InvalidClientMetadata(f"grant_types may only contain {sorted(allowed)}")


def check_registered_response_types(response_types: list[str]) -> None:
    """RFC 7591 §2.1: the code flow is the only one here (no implicit flow, RFC 9700 §2.1.2)."""
    if response_types != ["code"]:
        raise InvalidClientMetadata("response_types must be exactly code")


def check_registered_redirect_uris(redirect_uris: list[str], grant_types: list[str]) -> None:
    """RFC 7591 §2: the code flow needs redirect URIs, and each must be safe
    (`redirect_uri_problem`)."""
    if "authorization_code" in grant_types and not redirect_uris:
        raise InvalidRedirectUri("redirect_uris is required for the authorization code grant")
    for uri in redirect_uris:
        problem = redirect_uri_problem(uri)
        if problem:
            raise InvalidRedirectUri(f"{printable(uri)}: {problem}")


def check_post_logout_redirect_uris(uris: object) -> list[str]:
    """OpenID Connect RP-Initiated Logout §3.1: where a client may ask to be sent back after
    signing out; each is held to the rules of a redirect URI (`redirect_uri_problem`: https,
    or http on a loopback address), and is later matched exactly."""
    if not isinstance(uris, list) or not all(isinstance(uri, str) for uri in uris):
        raise InvalidClientMetadata("post_logout_redirect_uris must be a list of strings")
    for uri in uris:
        problem = redirect_uri_problem(uri)
        if problem:
            raise InvalidRedirectUri(f"post_logout_redirect_uris: {printable(uri)}: {problem}")
    return uris


def post_logout_redirect_uri_registered(client, uri: str) -> bool:
    """RP-Initiated Logout §3: only a URI the client registered, compared as an exact string
    (no loopback port leeway: a logout redirect carries no code to protect)."""
    return uri in client.metadata.get("post_logout_redirect_uris", [])


class LogoutMetadataClaims(BaseClaims):
    """The RFC 7591 registration metadata of RP-Initiated Logout (§3.1), kept and checked
    (`check_post_logout_redirect_uris`) beside Authlib's RFC 7591 claims."""

    REGISTERED_CLAIMS = ["post_logout_redirect_uris"]

    def validate(self, now=None, leeway=0):
        if "post_logout_redirect_uris" in self:
            check_post_logout_redirect_uris(self["post_logout_redirect_uris"])


def registered_scope(scope: str | None, supported: list[str]) -> str:
    """RFC 7591 §2: the scopes the client may ask for; all of them when it names none, and
    none this server does not define."""
    requested = scope_set(scope) or set(supported)
    unknown = requested - set(supported)
    if unknown:
        raise InvalidClientMetadata(f"unknown scope: {printable(scope_str(unknown))}")
    return scope_str(requested)


# -- client names (RFC 7591 §5: shown to users, chosen by anyone) -----------------------------

# Control, format (bidi overrides, zero-width), private-use, surrogate and unassigned
# characters, and line or paragraph separators: none belongs in a name a person reads.
HIDDEN_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}
# Scripts that may mix with each other and with Latin (Japanese, Korean and Chinese names
# do); any other mix, such as Cyrillic or Greek letters among Latin ones, is a look-alike.
MIXABLE_SCRIPTS = {"CJK", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA", "HANGUL"}


def letter_scripts(name: str) -> set[str]:
    """The scripts of a name's letters, as the first word of their Unicode names."""
    return {unicodedata.name(ch, "?").split(" ")[0] for ch in name if ch.isalpha()}


def name_skeleton(name: str) -> str:
    """What a reader compares: letters and digits, case and compatibility forms folded."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", name).casefold() if ch.isalnum())


def imitates(skeleton: str, operator_skeleton: str) -> bool:
    """The name holds the operator's ("Acme" and "Acme official"), or is the first half or
    more of it ("MCP client" and "MCP client (desktop)")."""
    return bool(operator_skeleton) and (
        operator_skeleton in skeleton
        or (operator_skeleton.startswith(skeleton) and 2 * len(skeleton) >= len(operator_skeleton))
    )


def registered_client_name(name: str, operator_names: Iterable[str]) -> str:
    """The client_name a self-registering client may have (RFC 7591 §5: it is shown to users
    and anyone may choose it): NFKC-normalised with runs of whitespace made one space, at most
    MAX_CLIENT_NAME characters; refused when it hides characters (control, bidi, zero-width),
    mixes look-alike scripts, or imitates the name of a client the operator registered."""
    name = unicodedata.normalize("NFKC", name)
    if any(unicodedata.category(ch) in HIDDEN_CATEGORIES for ch in name):
        raise InvalidClientMetadata(
            "client_name must not contain control, formatting (bidi, zero-width) or "
            "unassigned characters"
        )
    name = " ".join(name.split())
    if len(name) > MAX_CLIENT_NAME:
        raise InvalidClientMetadata(f"client_name may have at most {MAX_CLIENT_NAME} characters")
    scripts = letter_scripts(name) - MIXABLE_SCRIPTS
    if len(scripts) > 1:
        raise InvalidClientMetadata(
            f"client_name mixes letters of several scripts ({', '.join(sorted(scripts))})"
        )
    skeleton = name_skeleton(name)
    if any(imitates(skeleton, name_skeleton(known)) for known in operator_names):
        raise InvalidClientMetadata("client_name imitates a client registered by the operator")
    return name


# -- Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document) ---------------

MAX_DOCUMENT_URL = 200  # the client_id column's width
DOCUMENT_GRANT_TYPES = {"authorization_code", "refresh_token"}
DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")


def check_document_url(url: str, allow_loopback_http: bool) -> None:
    """CIMD §3: the client_id URL uses https, has a path, and no fragment, user information or
    dot segments. Plain http is accepted only for a loopback host, and only when the
    development setting allows loopback documents."""
    if len(url) > MAX_DOCUMENT_URL:
        raise InvalidClientMetadata(
            f"a client_id URL may have at most {MAX_DOCUMENT_URL} characters"
        )
    if not URI_CHARACTERS.fullmatch(url):
        raise InvalidClientMetadata("client_id is not a valid URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise InvalidClientMetadata("client_id is not a valid URL") from exc
    loopback_http = (
        allow_loopback_http and parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    )
    if parts.scheme != "https" and not loopback_http:
        raise InvalidClientMetadata("a client_id URL must use https")
    if not parts.hostname or parts.username or parts.password or "#" in url:
        raise InvalidClientMetadata(
            "a client_id URL needs a host, and no user information or fragment"
        )
    if parts.path in ("", "/") or DOT_SEGMENT.search(parts.path):
        raise InvalidClientMetadata("a client_id URL needs a path without . or .. segments")


def document_address_problem(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool
) -> str | None:
    """Why the provider will not connect to `address` for a metadata document (CIMD §6.5,
    server-side request forgery), or None: only globally routable unicast addresses, and
    loopback ones when the development setting allows them."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if not address.is_global:
        return "a private, link-local or reserved address"
    return None


def document_metadata(
    url: str, document: object, supported_scopes: list[str], operator_names: Iterable[str]
) -> dict:
    """CIMD §4: a metadata document is RFC 7591 metadata whose client_id is the URL it was
    fetched from; it passes the same checks as a registration (types, redirect URIs, name,
    scope). Its client has no secret to share (CIMD §4.1: no client_secret methods), so it
    is a public client; it may use the code flow and refresh tokens."""
    if not isinstance(document, dict):
        raise InvalidClientMetadata("the metadata document is not a JSON object")
    if document.get("client_id") != url:
        raise InvalidClientMetadata("the metadata document's client_id is not its own URL")
    check_metadata_types(document)
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none" or "client_secret" in document:
        raise InvalidClientMetadata(
            "a metadata document client must use token_endpoint_auth_method none"
        )
    grant_types = document.get("grant_types", ["authorization_code"])
    check_registered_grant_types(grant_types, DOCUMENT_GRANT_TYPES)
    check_registered_response_types(document.get("response_types", ["code"]))
    check_registered_redirect_uris(document.get("redirect_uris", []), grant_types)
    name = document.get("client_name")
    logout_uris = check_post_logout_redirect_uris(document.get("post_logout_redirect_uris", []))
    return {
        **({"client_name": registered_client_name(name, operator_names)} if name else {}),
        "redirect_uris": document.get("redirect_uris", []),
        "post_logout_redirect_uris": logout_uris,
        "grant_types": grant_types,
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "scope": registered_scope(document.get("scope"), supported_scopes),
    }
