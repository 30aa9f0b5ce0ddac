"""OpenID Connect RP-Initiated Logout 1.0: a relying party sends the person to
/end_session to sign out of the provider too (the server-side session row ends,
storage/sessions.py), and may have them sent back to a post-logout redirect URI it registered.

Authlib's EndSessionEndpoint validates the request: the `id_token_hint` must be an ID token
this provider signed (an expired one is fine, §2), `client_id` must be its audience, and
`post_logout_redirect_uri` must be one that client registered, compared exactly (§3). Here
an unregistered one is an error page, never a redirect (§4). A request that cannot be
trusted (no valid hint, or a hint about someone else than who is signed in here) signs out
only after the person confirms on a CSRF-protected page (§6: logout CSRF, denial of service).
"""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from joserfc.errors import JoseError
from joserfc.jws import extract_compact
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mcp_oauth.provider.authorization_server import (
    AuthorizationServer,
    authlib_refused_error_text,
)
from mcp_oauth.provider.client_checks import post_logout_redirect_uri_registered
from mcp_oauth.provider.http_hardening import page_policy, redirect_source
from mcp_oauth.provider.identity import ID_TOKEN_ALG
from mcp_oauth.provider.oauth_request import read_parameters
from mcp_oauth.provider.pages import (
    client_description,
    csrf_ok,
    csrf_token,
    expired_form_page,
    message_page,
    signed_in,
    templates,
)
from mcp_oauth.provider.sign_in import SignIn

END_SESSION_PATH = "/end_session"
FORM_FIELDS = {"csrf_token", "decision"}  # what the confirmation form adds to the request
ID_TOKEN_TYPES = ("", "jwt")  # RFC 7519 §5.1: an ID token carries no typ or "JWT"


def check_hint_is_our_id_token(hint: str, claims: dict, issuer_url: str) -> None:
    """RP-Initiated Logout §2: the OP validates that it issued the ID token. The signature
    (checked by Authlib) is our key's, which also signs JWT access tokens (RFC 9068, typ
    at+jwt) and Security Event Tokens (RFC 8417, typ secevent+jwt). So an allow list, not a
    deny list: the hint is typed as an ID token (no typ, or "JWT"), carries the claims every
    ID token has (OIDC Core §2: sub, aud) and names this issuer."""
    try:
        header = extract_compact(hint.encode()).protected
    except (JoseError, ValueError) as exc:
        raise InvalidRequestError("id_token_hint is not an ID token") from exc
    if str(header.get("typ", "")).lower() not in ID_TOKEN_TYPES:
        raise InvalidRequestError("id_token_hint is another kind of token, not an ID token")
    if "sub" not in claims or "aud" not in claims:
        raise InvalidRequestError("id_token_hint lacks the sub and aud of an ID token")
    if claims.get("iss") != issuer_url:
        raise InvalidRequestError("id_token_hint was not issued by this provider")


def check_post_logout_redirect_uri(data: dict, validated: EndSessionRequest) -> None:
    """RP-Initiated Logout §3-4: a post_logout_redirect_uri names a client (client_id or the
    hint's audience) that registered exactly this URI; anything else is an error shown here,
    so this endpoint is no open redirector."""
    uri = data.get("post_logout_redirect_uri")
    if uri is None:
        return
    if validated.client is None:
        raise InvalidRequestError("post_logout_redirect_uri needs a client_id or id_token_hint")
    if not post_logout_redirect_uri_registered(validated.client, uri):
        raise InvalidRequestError("post_logout_redirect_uri is not one this application registered")


def sole_audience(claims: dict) -> str | None:
    """OIDC Core §2: our ID tokens name the client as their only audience (a list of one)."""
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return audiences[0] if len(audiences) == 1 and isinstance(audiences[0], str) else None


def trusted(validated: EndSessionRequest, username: str | None) -> bool:
    """RP-Initiated Logout §6: a request signs out without asking only when it carries a
    valid ID token (`id_token_hint`) about the person signed in here."""
    claims = validated.id_token_claims
    return claims is not None and username is not None and claims.get("sub") == username


class EndSession(EndSessionEndpoint):
    """Authlib's RP-Initiated Logout endpoint, bound to the provider's key and clients."""

    def get_server_jwks(self) -> dict:
        return self.server.minter.public_jwks()

    def get_algorithms(self) -> list[str]:
        return [ID_TOKEN_ALG]

    def _validate_id_token_hint(self, id_token_hint: str) -> dict:
        claims = super()._validate_id_token_hint(id_token_hint)
        check_hint_is_our_id_token(id_token_hint, claims, self.server.issuer_url)
        return claims

    def resolve_client_from_id_token_claims(self, id_token_claims: dict):
        audience = sole_audience(id_token_claims)
        return self.server.query_client(audience) if audience else None

    def _is_valid_post_logout_redirect_uri(self, client, post_logout_redirect_uri: str) -> bool:
        # Authlib reads `client.client_metadata`; our clients keep theirs in `metadata`.
        return post_logout_redirect_uri_registered(client, post_logout_redirect_uri)

    def validate_request(self, request) -> EndSessionRequest:
        validated = super().validate_request(request)
        check_post_logout_redirect_uri(request.payload.data, validated)
        return validated

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        """The page ends the browser's session itself (SignIn.end_session): it holds the
        cookie, in the event loop."""


class EndSessionPage:
    """/end_session for a person's browser: validate, confirm when needed, sign out, and
    send them back to the relying party or say they are signed out."""

    def __init__(self, server: AuthorizationServer, sign_in: SignIn):
        self.server = server
        self.sign_in = sign_in

    async def serve(self, request: Request) -> Response:
        try:
            items = await read_parameters(request)
        except OAuth2Error as error:
            return invalid_logout_page(request, error.description or error.error)
        form = dict(items)
        confirming = request.method == "POST" and "csrf_token" in form
        if confirming and not csrf_ok(request, form):
            return expired_form_page(request)
        params = [(key, value) for key, value in items if key not in FORM_FIELDS]
        oauth_request = self.server.make_request(request.method, END_SESSION_PATH, request, params)
        try:
            validated = await run_in_threadpool(
                self.server.validate_endpoint_request, "end_session", oauth_request
            )
        except OAuth2Error as error:
            return invalid_logout_page(request, error.description or error.error)
        except ValueError as exc:  # Authlib refusing to echo a description (see the helper)
            if not authlib_refused_error_text(exc):
                raise
            return invalid_logout_page(request, "A parameter holds characters not allowed.")
        account = await signed_in(request, self.server.accounts, self.server.store.sessions)
        username = account.username if account else None
        if account is not None and not confirming and not trusted(validated, username):
            return confirmation_page(request, validated, params, username)
        if confirming and form.get("decision") != "sign_out":
            return message_page(
                request, 200, "Still signed in", "You are still signed in.", is_error=False
            )
        await self.sign_in.end_session(request)
        answer = await run_in_threadpool(
            self.server.create_endpoint_response, "end_session", validated
        )
        if answer is not None and answer.headers.get("location"):
            status = 303 if request.method == "POST" else 302
            return RedirectResponse(answer.headers["location"], status_code=status)
        return message_page(request, 200, "Signed out", "You are signed out.", is_error=False)


def invalid_logout_page(request: Request, message: str) -> Response:
    """A sign-out request this server will not act on (§4: and never redirects)."""
    return message_page(
        request,
        400,
        "This sign-out link is not valid",
        message,
        "You are still signed in here. Go back to the application and sign out again; if it "
        "keeps happening, the application is misconfigured (its post_logout_redirect_uri).",
    )


def confirmation_page(
    request: Request, validated: EndSessionRequest, params: list, username: str
) -> Response:
    """Ask before signing out (§6); the form may be redirected to the validated
    post-logout URI, so the page's form-action allows its origin (`redirect_source`)."""
    target = redirect_source(validated.redirect_uri) if validated.redirect_uri else None
    return templates.TemplateResponse(
        request,
        "end_session.html",
        {
            "title": "Sign out?",
            **client_description(validated.client),
            "username": username,
            "csrf_token": csrf_token(request),
            "params": params,
            "action": END_SESSION_PATH,
        },
        headers={"Content-Security-Policy": page_policy(target) if target else page_policy()},
    )
