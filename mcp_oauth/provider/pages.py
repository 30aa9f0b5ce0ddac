"""The pages a person sees: sign-in, consent, device code entry, and human error messages.

The signed session cookie (Starlette's SessionMiddleware, itsdangerous) remembers who signed
in and holds the CSRF token every form must echo. Sign-in failures are throttled per
account and per client address, with the same message for an unknown user and a wrong
password (and the same argon2 cost, see passwords.py).
"""

from __future__ import annotations

import hmac
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.errors import OAuth2Error
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from mcp_oauth.provider.authorization_server import AuthorizationServer, read_parameters
from mcp_oauth.provider.grants import allowed_scopes, granted_scopes
from mcp_oauth.provider.passwords import verify_password
from mcp_oauth.provider.records import is_loopback_redirect

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

SCOPE_DESCRIPTIONS = {
    "read": "read your records and notes",
    "write": "create, change and delete your records and notes",
    "admin": "administer the server: see who holds access and revoke it",
}
FREE_LOGIN_FAILURES = 5
MAX_LOGIN_BACKOFF = 300
FORM_FIELDS = {"csrf_token", "decision"}


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok(request: Request, form: dict) -> bool:
    expected = request.session.get("csrf")
    presented = form.get("csrf_token", "")
    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())


def message_page(
    request: Request, status: int, title: str, message: str, hint: str = "", is_error: bool = True
) -> Response:
    return templates.TemplateResponse(
        request,
        "message.html",
        {"title": title, "message": message, "hint": hint, "is_error": is_error},
        status_code=status,
    )


def expired_form_page(request: Request) -> Response:
    return message_page(
        request,
        400,
        "Please try again",
        "This form expired or did not come from this site.",
        "Go back to the application and start again.",
    )


def safe_next(target: str) -> str:
    """Only our own authorization or device pages may follow a sign-in: no open redirect."""
    if target.startswith(("/authorize?", "/device")) and not target.startswith(("//", "/\\")):
        return target
    return "/device"


class Pages:
    def __init__(self, server: AuthorizationServer, login_backoff_base: float = 2.0):
        self.server = server
        self.login_backoff_base = login_backoff_base

    def signed_in(self, request: Request):
        return self.server.accounts.get(request.session.get("user", ""))

    def login_page(
        self,
        request: Request,
        next_target: str,
        *,
        error: str = "",
        username: str = "",
        status: int = 200,
        client_name: str = "",
    ) -> Response:
        return templates.TemplateResponse(
            request,
            "login.html",
            {
                "title": "Sign in",
                "csrf_token": csrf_token(request),
                "next": next_target,
                "error": error,
                "username": username,
                "client_name": client_name,
            },
            status_code=status,
        )

    def client_redirect(self, location: str) -> Response:
        """Every redirect back to a client carries `iss` (RFC 9207)."""
        location = add_params_to_uri(location, [("iss", self.server.issuer_url)])
        return RedirectResponse(location, status_code=302)

    def oauth_error(self, request: Request, error: OAuth2Error, *, redirect: bool) -> Response:
        """Redirect the error to the client only when its redirect_uri was verified and the
        redirect is allowed; otherwise show it here (an unknown client or a bad redirect_uri
        never redirects)."""
        if error.redirect_uri and redirect:
            status, _, headers = error()
            return self.client_redirect(dict(headers)["Location"])
        return message_page(
            request,
            400,
            "This sign-in link is not valid",
            error.description or error.error,
            "Go back to the application and start again. If it keeps happening, the "
            "application is misconfigured (check its client_id and redirect_uri).",
        )

    # -- /authorize -------------------------------------------------------------------------

    async def validated(self, request: Request, oauth_request, account):
        """Authlib's validation of an authorization request: (grant, None), or (None, the
        response that reports its error).

        An error goes back without the user's action only to a pre-registered client or a
        loopback redirect URI: anyone can register a client, and redirecting its errors
        would make this server an open redirector (RFC 9700 §4.11.2)."""
        try:
            grant = await run_in_threadpool(self.server.get_consent_grant, oauth_request, account)
            return grant, None
        except OAuth2Error as error:
            client = oauth_request.client
            trusted = (client is not None and client.preregistered) or is_loopback_redirect(
                error.redirect_uri or ""
            )
            return None, self.oauth_error(request, error, redirect=trusted)
        except ValueError:  # Authlib refuses to echo characters RFC 6749 forbids in errors
            return None, message_page(
                request,
                400,
                "This sign-in link is not valid",
                "A parameter contains characters that are not allowed.",
            )

    async def authorize(self, request: Request) -> Response:
        try:
            oauth_request = await self.server.oauth2_request(request)
        except OAuth2Error as error:
            return self.oauth_error(request, error, redirect=False)
        if request.method == "POST":
            return await self.decide(request, oauth_request)
        account = self.signed_in(request)
        grant, problem = await self.validated(request, oauth_request, account)
        if problem:
            return problem
        client = grant.client
        if account is None:
            return self.login_page(
                request, f"/authorize?{request.url.query}", client_name=client.client_name
            )
        granted, unavailable = granted_scopes(self.server, oauth_request, account)
        return templates.TemplateResponse(
            request,
            "consent.html",
            {
                "title": "Allow access?",
                "client_name": client.client_name,
                "unverified": not client.preregistered,
                "username": account.username,
                "redirect_host": urlsplit(oauth_request.payload.redirect_uri).netloc,
                "resource": oauth_request.resource,
                "scopes": [(s, SCOPE_DESCRIPTIONS.get(s, "")) for s in sorted(granted)],
                "unavailable": sorted(unavailable),
                "csrf_token": csrf_token(request),
                "params": oauth_request.payload.items,
                "action": "/authorize",
            },
        )

    async def decide(self, request: Request, oauth_request) -> Response:
        form = oauth_request.payload.data
        if not csrf_ok(request, form):
            return expired_form_page(request)
        params = [(k, v) for k, v in oauth_request.payload.items if k not in FORM_FIELDS]
        account = self.signed_in(request)
        if account is None:
            return self.login_page(request, "/authorize?" + urlencode(params))
        oauth_request = self.server.make_request("POST", "/authorize", request, params)
        grant, problem = await self.validated(request, oauth_request, account)
        if problem:
            return problem
        approved = form.get("decision") == "approve"
        response = await run_in_threadpool(
            self.server.create_authorization_response,
            oauth_request,
            account if approved else None,
            grant,
        )
        location = response.headers.get("location")
        if response.status_code != 302 or not location:
            return message_page(
                request, 400, "Something was wrong with this request", response.body.decode()
            )
        return self.client_redirect(location)

    # -- /login ----------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        try:
            form = dict(await read_parameters(request))
        except OAuth2Error:
            return self.login_page(
                request,
                "/device",
                status=400,
                error="The sign-in form was not understood. Please sign in again.",
            )
        next_target = safe_next(form.get("next", ""))
        username = form.get("username", "")[:200]
        if not csrf_ok(request, form):
            return self.login_page(
                request,
                next_target,
                username=username,
                status=400,
                error="This form expired. Please sign in again.",
            )
        client_address = request.client.host if request.client else "unknown"
        keys = [f"user:{username.lower()}", f"addr:{client_address}"]
        wait = await run_in_threadpool(self._login_wait, keys)
        if wait > 0:
            return self.login_page(
                request,
                next_target,
                username=username,
                status=429,
                error=f"Too many failed sign-ins. Try again in {wait} seconds.",
            )
        account = self.server.accounts.get(username)
        password_hash = account.password_hash if account else None
        ok = await run_in_threadpool(verify_password, password_hash, form.get("password", ""))
        if not ok:
            await run_in_threadpool(self.server.store.record_login_failure, keys)
            return self.login_page(
                request,
                next_target,
                username=username,
                status=401,
                error="Wrong username or password.",
            )
        await run_in_threadpool(self.server.store.clear_login_failures, keys[:1])
        request.session.clear()
        request.session.update(
            {
                "user": account.username,
                "auth_time": int(time.time()),
                "csrf": secrets.token_urlsafe(32),
            }
        )
        return RedirectResponse(next_target, status_code=303)

    def _login_wait(self, keys: list[str]) -> int:
        """Seconds to wait before the next attempt: none for the first few failures, then
        doubling with every failure, up to five minutes."""
        wait = 0.0
        for failures, last_failure_at in self.server.store.login_failures(keys):
            if failures >= FREE_LOGIN_FAILURES:
                backoff = min(
                    self.login_backoff_base ** (failures - FREE_LOGIN_FAILURES + 1),
                    MAX_LOGIN_BACKOFF,
                )
                wait = max(wait, last_failure_at + backoff - time.time())
        return int(wait + 0.999)

    async def logout(self, request: Request) -> Response:
        try:
            form = dict(await read_parameters(request))
        except OAuth2Error:
            form = {}
        if not csrf_ok(request, form):
            return expired_form_page(request)
        request.session.clear()
        return message_page(request, 200, "Signed out", "You are signed out.", is_error=False)

    # -- /device (RFC 8628 §3.3) -------------------------------------------------------------

    async def device(self, request: Request) -> Response:
        account = self.signed_in(request)
        if request.method == "GET":
            user_code = request.query_params.get("user_code", "")[:20]
            if account is None:
                target = "/device" + (
                    f"?{urlencode({'user_code': user_code})}" if user_code else ""
                )
                return self.login_page(request, target)
            return self.device_page(request, user_code)
        try:
            form = dict(await read_parameters(request))
        except OAuth2Error:
            return message_page(request, 400, "Please try again", "The form was not understood.")
        if not csrf_ok(request, form):
            return expired_form_page(request)
        if account is None:
            return self.login_page(request, "/device")
        user_code = form.get("user_code", "").strip().upper()[:20]
        record = await run_in_threadpool(self.server.store.find_device_by_user_code, user_code)
        if record is None or record.is_expired() or record.decision is not None:
            return self.device_page(
                request, user_code, "That code is not valid or has expired.", 400
            )
        if "decision" not in form:
            return self.device_consent(request, account, record)
        approved = form["decision"] == "approve"
        granted = allowed_scopes(self.server, set(record.scope.split()), account, record.resource)
        decided = await run_in_threadpool(
            self.server.store.decide_device_code,
            user_code,
            account.username,
            " ".join(sorted(granted)),
            approved and bool(granted),
        )
        if not decided:
            return self.device_page(
                request, user_code, "That code is not valid or has expired.", 400
            )
        if approved and granted:
            return message_page(
                request, 200, "Device connected", "You can return to your device.", is_error=False
            )
        return message_page(
            request,
            200,
            "Access denied",
            "The device was not given access. You can close this page.",
            is_error=False,
        )

    def device_page(
        self, request: Request, user_code: str, error: str = "", status: int = 200
    ) -> Response:
        return templates.TemplateResponse(
            request,
            "device.html",
            {
                "title": "Connect a device",
                "csrf_token": csrf_token(request),
                "user_code": user_code,
                "error": error,
            },
            status_code=status,
        )

    def device_consent(self, request: Request, account, record) -> Response:
        client = self.server.store.get_client(record.client_id)
        requested = set(record.scope.split())
        granted = allowed_scopes(self.server, set(record.scope.split()), account, record.resource)
        return templates.TemplateResponse(
            request,
            "consent.html",
            {
                "title": "Allow access?",
                "client_name": client.client_name if client else record.client_id,
                "username": account.username,
                "redirect_host": "",
                "resource": record.resource,
                "scopes": [(s, SCOPE_DESCRIPTIONS.get(s, "")) for s in sorted(granted)],
                "unavailable": sorted(requested - granted),
                "csrf_token": csrf_token(request),
                "params": [("user_code", record.user_code)],
                "action": "/device",
            },
        )
