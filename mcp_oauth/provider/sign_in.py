"""/login and /logout. Sign-in attempts are throttled per account and per client address, each
reserved before its password is checked (storage/login_throttle.py), with the same message
for an unknown user and a wrong password (and the same argon2 cost, see passwords.py). A
sign-in starts a session row (storage/sessions.py) that signing out deletes."""

from __future__ import annotations

import secrets

from authlib.oauth2.rfc6749.errors import OAuth2Error
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mcp_oauth.provider.oauth_request import read_parameters
from mcp_oauth.provider.pages import csrf_ok, expired_form_page, login_page, message_page
from mcp_oauth.provider.passwords import verify_password
from mcp_oauth.provider.storage.login_throttle import LoginThrottle
from mcp_oauth.provider.storage.sessions import SessionStore
from mcp_oauth.provider.users_file import Account


def safe_next(target: str) -> str:
    """Only our own authorization or device pages may follow a sign-in: no open redirect."""
    if target.startswith(("/authorize?", "/device")) and not target.startswith(("//", "/\\")):
        return target
    return "/device"


class SignIn:
    def __init__(
        self, accounts: dict[str, Account], throttle: LoginThrottle, sessions: SessionStore
    ):
        self.accounts = accounts
        self.throttle = throttle
        self.sessions = sessions

    async def login(self, request: Request) -> Response:
        try:
            form = dict(await read_parameters(request))
        except OAuth2Error:
            return login_page(
                request,
                "/device",
                status=400,
                error="The sign-in form was not understood. Please sign in again.",
            )
        next_target = safe_next(form.get("next", ""))
        username = form.get("username", "")[:200]
        if not csrf_ok(request, form):
            return login_page(
                request,
                next_target,
                username=username,
                status=400,
                error="This form expired. Please sign in again.",
            )
        client_address = request.client.host if request.client else "unknown"
        keys = [f"user:{username.lower()}", f"addr:{client_address}"]
        if not await run_in_threadpool(self.throttle.reserve, keys):
            wait = max(1, await run_in_threadpool(self.throttle.wait_seconds, keys))
            return login_page(
                request,
                next_target,
                username=username,
                status=429,
                error=f"Too many failed sign-ins. Try again in {wait} seconds.",
            )
        account = self.accounts.get(username)
        password_hash = account.password_hash if account else None
        ok = await run_in_threadpool(verify_password, password_hash, form.get("password", ""))
        if not ok:
            return login_page(
                request,
                next_target,
                username=username,
                status=401,
                error="Wrong username or password.",
            )
        await run_in_threadpool(self.throttle.signed_in, *keys)
        await self.end_session(request)  # whoever was signed in here before is signed out
        session_id = await run_in_threadpool(self.sessions.start, account.username)
        # a new CSRF token and session id: no fixation
        request.session.update({"sid": session_id, "csrf": secrets.token_urlsafe(32)})
        return RedirectResponse(next_target, status_code=303)

    async def logout(self, request: Request) -> Response:
        try:
            form = dict(await read_parameters(request))
        except OAuth2Error:
            form = {}
        if not csrf_ok(request, form):
            return expired_form_page(request)
        await self.end_session(request)
        return message_page(request, 200, "Signed out", "You are signed out.", is_error=False)

    async def end_session(self, request: Request) -> None:
        """Delete this browser's session row, so no copy of its cookie is signed in any
        more, and forget the cookie's contents."""
        if request.session.get("sid"):
            await run_in_threadpool(self.sessions.end, request.session["sid"])
        request.session.clear()
