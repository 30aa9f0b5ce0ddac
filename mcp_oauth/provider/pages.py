"""What every page a person sees shares: the templates, the CSRF token, the signed-in account,
the sign-in form and the human error pages.

The signed session cookie (Starlette's SessionMiddleware, itsdangerous) holds the CSRF token
every form must echo and, once someone signed in, the id of their session row
(storage/sessions.py), which says who it is until it expires or they sign out. The pages
themselves: sign_in.py, authorize_page.py, device_page.py, and consent.py for the consent
page both flows show.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from mcp_oauth.provider.records import ClientRecord
from mcp_oauth.provider.storage.sessions import SessionStore
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


async def signed_in(
    request: Request, accounts: dict[str, Account], sessions: SessionStore
) -> Account | None:
    """The account this browser signed in as, while its session lives and the account still
    exists in users.yaml."""
    session_id = request.session.get("sid")
    if not session_id:
        return None
    username = await run_in_threadpool(sessions.username, session_id)
    return accounts.get(username or "")


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


def client_description(client: ClientRecord | None) -> dict:
    """What the sign-in and consent pages say about the client (templates/client_note.html):
    its name, and whether only the client itself chose that name (it registered itself,
    RFC 7591 §5: anyone can register any name; or its metadata document says so, and then the
    host that serves the document is what a person can judge)."""
    if client is None:
        return {"client_name": "", "unverified": False, "document_host": ""}
    return {
        "client_name": client.client_name,
        "unverified": not client.preregistered,
        "document_host": urlsplit(client.client_id).hostname if client.identified_by_url else "",
    }


def login_page(
    request: Request,
    next_target: str,
    *,
    error: str = "",
    username: str = "",
    status: int = 200,
    client: ClientRecord | None = None,
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
            **client_description(client),
        },
        status_code=status,
    )
