"""What every page a person sees shares: the templates, the CSRF token, the signed-in account,
the sign-in form and the human error pages.

The signed session cookie (Starlette's SessionMiddleware, itsdangerous) remembers who signed
in and holds the CSRF token every form must echo. The pages themselves: sign_in.py,
authorize_page.py, device_page.py, and consent.py for the consent page both flows show.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from mcp_oauth.provider.users_file import Account

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok(request: Request, form: dict) -> bool:
    expected = request.session.get("csrf")
    presented = form.get("csrf_token", "")
    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())


def signed_in(request: Request, accounts: dict[str, Account]) -> Account | None:
    """The account this browser signed in as, if it still exists in users.yaml."""
    return accounts.get(request.session.get("user", ""))


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


def invalid_link_page(request: Request, message: str) -> Response:
    """An authorization request this server will not act on, shown to the person."""
    return message_page(
        request,
        400,
        "This sign-in link is not valid",
        message,
        "Go back to the application and start again. If it keeps happening, the "
        "application is misconfigured (check its client_id and redirect_uri).",
    )


def login_page(
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
