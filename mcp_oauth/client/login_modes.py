"""The three ways a person signs in: system browser, password typed into the provider's forms
by the client itself (headless), or a code entered on another device.

Browser and headless are the same authorization code flow (`authorization_code.py`) and
differ only in who walks through the provider's pages: a person in their browser, reaching
our loopback callback (RFC 8252 §7.3), or `headless.py` filling in the same forms over HTTP.
Either way the authorization URL is requested exactly once per sign-in, as a browser does:
no pre-flight request. The device mode is RFC 8628:
show a code, poll until the person has approved it elsewhere.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import webbrowser
from typing import Protocol
from urllib.parse import urlsplit

import anyio
import httpx2
import uvicorn
from mcp.shared.auth import OAuthToken
from rich.console import Console
from rich.panel import Panel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from mcp_oauth.client import headless
from mcp_oauth.client.authorization_code import AuthorizationRequest, authorization_code_flow
from mcp_oauth.client.errors import ClientError, reaching
from mcp_oauth.client.identity import REGISTERED_REDIRECT_URI
from mcp_oauth.client.token_requests import ClientRejected
from mcp_oauth.client.trace import Trace, redact_url

CALLBACK_PORT = 53682  # the loopback port tried first; any free one is fine for the provider
SIGN_IN_TIMEOUT = 300.0


class LoginMode(Protocol):
    async def authorize(self, request: AuthorizationRequest) -> OAuthToken: ...


class BrowserLogin:
    """Open the system browser (or print the URL to paste) and wait on a loopback callback."""

    def __init__(self, console: Console, trace: Trace | None, open_browser: bool = True):
        self.console = console
        self.trace = trace
        self.open_browser = open_browser

    async def authorize(self, request: AuthorizationRequest) -> OAuthToken:
        with loopback_socket() as sock:
            redirect_uri = f"http://127.0.0.1:{sock.getsockname()[1]}/callback"

            async def user_agent(url: str) -> str:
                if self.open_browser and browser_beside_terminal():
                    self.console.print("Opening your browser to sign in (or open this URL):")
                    # In a thread: some browsers only return when they are closed.
                    threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
                else:
                    self.console.print("Open this URL in a browser to sign in:")
                self.console.print(url, soft_wrap=True, highlight=False, markup=False)
                with self.console.status(f"Waiting for the sign-in to reach {redirect_uri} …"):
                    arrived = await wait_for_callback(sock, redirect_uri)
                if self.trace:  # the browser's own exchanges never pass through this process
                    self.trace.note(f"browser → callback  GET {redact_url(arrived)}")
                return arrived

            return await authorization_code_flow(request, redirect_uri, user_agent)


def browser_beside_terminal() -> bool:
    """Whether a browser can open without taking over this terminal: on macOS and Windows, on
    a graphical display, or when $BROWSER names one (text browsers would block the terminal)."""
    return sys.platform in ("darwin", "win32") or any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")
    )


def loopback_socket() -> socket.socket:
    """A listening socket on 127.0.0.1: CALLBACK_PORT if free, else any free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", CALLBACK_PORT))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def wait_for_callback(sock: socket.socket, redirect_uri: str) -> str:
    """Serve the redirect URI until the browser arrives; the full URL it arrived at."""
    arrived: list[str] = []

    async def callback(request: Request) -> HTMLResponse:
        arrived.append(f"{redirect_uri}?{request.url.query}")
        server.should_exit = True
        failed = "error" in request.query_params
        return HTMLResponse(
            "<!doctype html><title>MCP client</title><p>"
            + ("Sign-in did not complete." if failed else "Signed in.")
            + " You can close this tab and return to the terminal.</p>"
        )

    app = Starlette(routes=[Route("/callback", callback)])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    with anyio.move_on_after(SIGN_IN_TIMEOUT) as waiting:
        await server.serve(sockets=[sock])
    if not arrived and not waiting.cancelled_caught:
        raise KeyboardInterrupt  # uvicorn took the Ctrl+C while serving, and stopped
    if not arrived:
        raise ClientError(
            f"no sign-in reached {redirect_uri} within {SIGN_IN_TIMEOUT:.0f} s",
            "run again and open the printed URL in a browser on this machine",
        )
    return arrived[0]


class PasswordLogin:
    """Headless: the client fills in the provider's own login and consent forms."""

    def __init__(self, username: str, password: str, trace: Trace | None):
        self.username = username
        self.password = password
        self.trace = trace

    async def authorize(self, request: AuthorizationRequest) -> OAuthToken:
        login_page = str(request.endpoints.metadata.authorization_endpoint)
        try:
            headless.check_password_transport(login_page)
        except headless.HeadlessLoginError as exc:
            raise ClientError(
                f"refusing to send {self.username}'s password over plain http to "
                f"{urlsplit(login_page).hostname}",
                "use an https provider, or sign in with the browser (drop --password)",
            ) from exc

        async def user_agent(url: str) -> str:
            hooks = self.trace.hooks() if self.trace else {}
            async with httpx2.AsyncClient(timeout=30, event_hooks=hooks) as forms:
                with reaching("authorization server", url, "start it (python oauth_provider.py)"):
                    try:
                        return await headless.authorize_with_password(
                            forms, url, self.username, self.password
                        )
                    except headless.AuthorizationRequestRefused as exc:
                        raise ClientRejected(
                            f"the provider refused the sign-in request for client "
                            f"{request.endpoints.client.client_id!r}: {exc}",
                            "check --client-id if you gave one; re-run with --trace to see it",
                        ) from exc
                    except headless.WrongPasswordError as exc:
                        raise ClientError(
                            f"wrong password for {self.username}",
                            "check --user and --password (the test accounts are in the README)",
                        ) from exc
                    except headless.HeadlessLoginError as exc:
                        raise ClientError(
                            f"the provider's sign-in pages refused: {exc}",
                            "sign in with the browser instead (drop --password) to see why",
                        ) from exc

        return await authorization_code_flow(request, REGISTERED_REDIRECT_URI, user_agent)


class DeviceLogin:
    """RFC 8628: show the user code and where to enter it, then poll until it is approved."""

    def __init__(self, console: Console):
        self.console = console

    async def authorize(self, request: AuthorizationRequest) -> OAuthToken:
        device = await request.endpoints.start_device_authorization(request.scope)
        lines = [
            f"On any device, open [bold]{device.verification_uri}[/bold]",
            f"and enter the code  [bold reverse] {device.user_code} [/]",
        ]
        if device.verification_uri_complete:
            lines.append(f"(or open {device.verification_uri_complete})")
        self.console.print(Panel("\n".join(lines), title="Device sign-in", expand=False))
        minutes = device.expires_in // 60
        with self.console.status(f"Waiting for approval (the code expires in {minutes} min) …"):
            return await request.endpoints.poll_device_token(device)
