"""/login and /logout. Sign-in failures are throttled per account and per client address
(storage/login_throttle.py), with the same message for an unknown user and a wrong password
(and the same argon2 cost, see passwords.py)."""

from __future__ import annotations

import secrets
import time

from authlib.oauth2.rfc6749.errors import OAuth2Error
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mcp_oauth.provider.oauth_request import read_parameters
from mcp_oauth.provider.pages import csrf_ok, expired_form_page, login_page, message_page
from mcp_oauth.provider.passwords import verify_password
from mcp_oauth.provider.storage.login_throttle import LoginThrottle
from mcp_oauth.provider.users_file import Account

FREE_LOGIN_FAILURES = 5
MAX_LOGIN_BACKOFF = 300


def safe_next(target: str) -> str:
    """Only our own authorization or device pages may follow a sign-in: no open redirect."""
    if target.startswith(("/authorize?", "/device")) and not target.startswith(("//", "/\\")):
        return target
    return "/device"


class SignIn:
    def __init__(
        self, accounts: dict[str, Account], throttle: LoginThrottle, backoff_base: float = 2.0
    ):
        self.accounts = accounts
        self.throttle = throttle
        self.backoff_base = backoff_base

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
        wait = await run_in_threadpool(self.wait_seconds, keys)
        if wait > 0:
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
            await run_in_threadpool(self.throttle.record_failure, keys)
            return login_page(
                request,
                next_target,
                username=username,
                status=401,
                error="Wrong username or password.",
            )
        await run_in_threadpool(self.throttle.clear, keys[:1])
        request.session.clear()
        request.session.update(
            {
                "user": account.username,
                "auth_time": int(time.time()),
                "csrf": secrets.token_urlsafe(32),
            }
        )
        return RedirectResponse(next_target, status_code=303)

    def wait_seconds(self, keys: list[str]) -> int:
        """Seconds to wait before the next attempt: none for the first few failures, then
        doubling with every failure, up to five minutes."""
        wait = 0.0
        for failures, last_failure_at in self.throttle.failures(keys):
            if failures >= FREE_LOGIN_FAILURES:
                backoff = min(
                    self.backoff_base ** (failures - FREE_LOGIN_FAILURES + 1), MAX_LOGIN_BACKOFF
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
