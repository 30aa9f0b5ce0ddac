#!/usr/bin/env python3
"""The learner's MCP client: signs in wherever the MCP server sends it, then calls its tools.

    python client.py                                   # browser sign-in, then a tool prompt
    python client.py --user alice --password password123 call write_data key=a value=hello
    python client.py --device whoami                   # sign in on another device (RFC 8628)
    python client.py tools | whoami | logout
    python client.py --demo                            # every tool × alice, bob and admin

Nothing but the MCP server's URL is configured. The server's 401 names its protected resource
metadata (RFC 9728), that names the authorization server, whose metadata (RFC 8414, issuer
checked exactly) gives every endpoint. The client identifies itself with --client-id if given
(and --client-secret for a confidential one), else a client ID metadata document
(--client-metadata-url) if the provider supports them, else it registers itself (RFC 7591),
and authenticates at the token endpoint exactly as registered. Sign-in is the authorization
code flow with PKCE S256, `resource` (RFC 8707) and the `iss` check (RFC 9207) — or the
device grant.

Read top to bottom: settings, the client identity, the sign-in mode, the session (token cache,
refresh, step-up), the tool prompt and the one-shot commands, main().
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
from typing import Any

import anyio
import httpx2
from mcp_types import Tool
from rich.console import Console
from rich.prompt import Prompt
from rich.table import Table

from mcp_oauth.client.demo import run_demo
from mcp_oauth.client.errors import ClientError
from mcp_oauth.client.identity import ClientIdentity
from mcp_oauth.client.login import Login
from mcp_oauth.client.login_modes import BrowserLogin, DeviceLogin, LoginMode, PasswordLogin
from mcp_oauth.client.session import McpSession
from mcp_oauth.client.token_cache import TokenCache
from mcp_oauth.client.tools import (
    UNKNOWN,
    ask_arguments,
    parse_arguments,
    result_text,
    tool_requirements,
)
from mcp_oauth.client.trace import Trace

DEFAULT_URL = "http://localhost:8000/mcp"
WHOAMI_TOOL = "get_user_profile"  # the server's own view of the token (mcp_resource_server.py)

out = Console()  # results: tables, tool answers
ui = Console(stderr=True)  # everything else: sign-in prompts, spinners, the trace, errors


# --- Settings: flags and their environment variables ------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description="MCP client that signs in with OAuth 2.0 and calls the server's tools.",
        epilog="Tokens are cached per server and account under $XDG_CACHE_HOME/mcp-oauth "
        "(default ~/.cache/mcp-oauth), readable only by you.",
    )
    parser.add_argument(
        "--url",
        default=env("MCP_SERVER_URL", DEFAULT_URL),
        help=f"MCP endpoint (env MCP_SERVER_URL; default {DEFAULT_URL})",
    )
    login = parser.add_argument_group("signing in (default: the system browser)")
    login.add_argument("--user", help="account name; selects its cached tokens")
    login.add_argument(
        "--password", help="sign in headlessly through the provider's forms (needs --user)"
    )
    login.add_argument("--device", action="store_true", help="sign in on another device (RFC 8628)")
    login.add_argument("--no-browser", action="store_true", help="only print the sign-in URL")
    login.add_argument(
        "--scope", help="scopes to ask for at sign-in (default: what the server asks)"
    )
    login.add_argument(
        "--client-id",
        default=env("MCP_CLIENT_ID"),
        help="a client id registered at the provider "
        "(env MCP_CLIENT_ID; default: register dynamically)",
    )
    login.add_argument(
        "--client-secret",
        default=env("MCP_CLIENT_SECRET"),
        help="the secret of a confidential --client-id (env MCP_CLIENT_SECRET; prefer the "
        "variable: a flag shows in the process list); kept only in the owner-only token cache",
    )
    login.add_argument(
        "--client-metadata-url",
        default=env("MCP_CLIENT_METADATA_URL"),
        help="https URL of this client's metadata document, used when the provider supports "
        "them (env MCP_CLIENT_METADATA_URL)",
    )
    shown = parser.add_argument_group("output")
    shown.add_argument(
        "--trace", action="store_true", help="print every HTTP exchange, secrets redacted"
    )
    shown.add_argument("--show-token", action="store_true", help="print the access token")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="sign in as alice, bob and admin and try every tool (starts the servers if needed)",
    )
    commands = parser.add_subparsers(dest="command", metavar="[command]")
    commands.add_parser("tools", help="list the tools and the scope each needs")
    call = commands.add_parser(
        "call", help="call a tool: call NAME key=value … or call NAME '{json}'"
    )
    call.add_argument("name")
    call.add_argument("arguments", nargs="*")
    commands.add_parser("whoami", help="who the token says you are")
    commands.add_parser("logout", help="revoke the tokens and delete them from the cache")
    args = parser.parse_args(argv)
    if args.password and not args.user:
        parser.error("--password needs --user")
    if args.password and args.device:
        parser.error("choose either --password or --device")
    if args.client_secret and not args.client_id:
        parser.error("--client-secret (MCP_CLIENT_SECRET) needs --client-id (MCP_CLIENT_ID)")
    return args


# --- Identity: which client the user signs in through -----------------------------------------


def client_identity(args: argparse.Namespace) -> ClientIdentity:
    """--client-id (with --client-secret if it is confidential), else a client ID metadata
    document the provider supports, else dynamic registration (remembered in the token cache):
    the order the MCP specification prefers."""
    return ClientIdentity(args.client_id, args.client_secret, args.client_metadata_url)


# --- Sign-in mode: who walks through the provider's pages -------------------------------------


def login_mode(args: argparse.Namespace, trace: Trace | None) -> LoginMode:
    if args.password:
        return PasswordLogin(args.user, args.password, trace)
    if args.device:
        return DeviceLogin(ui)
    return BrowserLogin(ui, trace, open_browser=not args.no_browser)


# --- The session: a token on every request; 401 signs in, 403 steps up once -------------------


def open_login(args: argparse.Namespace, http: httpx2.AsyncClient, trace: Trace | None) -> Login:
    """One account's standing at the MCP server, starting from its token cache file. The
    McpSession (session.py) asks it for the token before each request, and after a 401 or 403
    to sign in, refresh or step up (login.py) — never twice for the same scope."""
    return Login(
        http,
        args.url,
        TokenCache(args.url, args.user),
        login_mode(args, trace),
        client_identity(args),
        account=args.user or "this account",
        scope=args.scope,
    )


# --- The tool prompt --------------------------------------------------------------------------


async def tool_prompt(mcp: McpSession, login: Login) -> None:
    """A numbered table of tools; call one by number or name, with arguments or when asked."""
    tools = await mcp.list_tools()
    if WHOAMI_TOOL in {tool.name for tool in tools}:  # signs in now rather than at the first call
        profile = await whoami(mcp, login)
        login.account = profile.get("username") or login.account
    await show_tools(mcp, tools)
    by_name = {tool.name: tool for tool in tools}
    ui.print(
        "Call a tool by number or name, optionally with key=value arguments or JSON; "
        "'tools' shows the table again, 'quit' leaves."
    )
    while True:
        try:
            line = await anyio.to_thread.run_sync(
                lambda: Prompt.ask("[bold]tool[/bold]", console=ui)
            )
        except EOFError:
            return
        words = shlex.split(line)
        if not words:
            continue
        if words[0] in ("quit", "exit", "q"):
            return
        if words[0] == "tools":
            await show_tools(mcp, tools)
            continue
        choice = words[0]
        tool = (
            tools[int(choice) - 1]
            if choice.isdigit() and 0 < int(choice) <= len(tools)
            else by_name.get(choice)
        )
        if tool is None:
            ui.print(
                f"[red]✗ no tool {choice!r}[/red] — type a number from the table or a tool name"
            )
            continue
        try:
            if words[1:]:
                arguments = parse_arguments(words[1:], tool.input_schema)
            else:
                arguments = await anyio.to_thread.run_sync(ask_arguments, tool.input_schema, ask)
            await call_tool(mcp, tool.name, arguments)
        except ClientError as failure:
            report(failure)


def ask(name: str, hint: str, required: bool) -> str:
    """One argument from the keyboard; a required one is asked for until it is given."""
    label = f"  {name} [dim]({hint}{'' if required else '; Enter skips'})[/dim]"
    while True:
        text = Prompt.ask(label, console=ui, default="", show_default=False)
        if text or not required:
            return text


# --- One-shot commands (and the pieces the prompt shares) -------------------------------------


async def show_tools(mcp: McpSession, tools: list[Tool]) -> None:
    needs = await tool_requirements(mcp, tools)
    table = Table(title=f"Tools at {mcp.url}")
    table.add_column("#", justify="right")
    table.add_column("tool", style="bold")
    table.add_column("needs")
    table.add_column("description")
    for number, tool in enumerate(tools, 1):
        summary = (tool.description or "").strip().splitlines()
        table.add_row(
            str(number), tool.name, needs.get(tool.name, UNKNOWN), summary[0] if summary else ""
        )
    out.print(table)


async def call_tool(mcp: McpSession, name: str, arguments: dict[str, Any]) -> bool:
    result = await mcp.call_tool(name, arguments)
    if result.is_error:
        ui.print(f"[red]✗ {name} failed:[/red] {result_text(result)}", highlight=False)
        return False
    out.print(result_text(result), highlight=False, markup=False)
    return True


async def call_by_name(mcp: McpSession, name: str, words: list[str]) -> bool:
    tools = {tool.name: tool for tool in await mcp.list_tools()}
    if name not in tools:
        raise ClientError(f"{mcp.url} has no tool {name!r}", "'tools' lists them")
    return await call_tool(mcp, name, parse_arguments(words, tools[name].input_schema))


async def whoami(mcp: McpSession, login: Login) -> dict[str, Any]:
    """The server's view of the token (signing in if needed), and what the cache holds."""
    result = await mcp.call_tool(WHOAMI_TOOL, {})
    if result.is_error:
        raise ClientError(f"{WHOAMI_TOOL} failed: {result_text(result)}", "try again with --trace")
    profile = result.structured_content or {}
    saved = login.saved
    rows = {
        "user": profile.get("username"),
        "scopes": " ".join(profile.get("scopes", [])) or (saved.issued_scope if saved else None),
        "expires in": f"{profile['token_expires_in']} s"
        if profile.get("token_expires_in")
        else None,
        "client id": saved.client.client_id if saved else None,
        "provider": str(saved.metadata.issuer) if saved else None,
        "resource": saved.resource if saved else None,
        "token cache": str(login.cache.path),
    }
    table = Table(show_header=False, title="Signed in")
    for key, value in rows.items():
        if value:
            table.add_row(key, str(value))
    out.print(table)
    return profile


async def logout(login: Login, url: str) -> None:
    if await login.logout():
        out.print(
            f"Signed out of {url}: tokens revoked at the provider and {login.cache.path} deleted."
        )
    else:
        out.print(f"Not signed in to {url} (no cached tokens at {login.cache.path}).")


# --- main() -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    trace = Trace(ui) if args.trace else None
    if trace:
        trace.name(args.url, "MCP server")
    if args.demo:
        return 0 if await run_demo(args.url, out, ui, trace) else 1
    async with httpx2.AsyncClient(timeout=30, event_hooks=trace.hooks() if trace else {}) as http:
        login = open_login(args, http, trace)
        if args.command == "logout":
            await logout(login, args.url)
            return 0
        async with McpSession(login, trace) as mcp:
            ok = True
            if args.command == "tools":
                await show_tools(mcp, await mcp.list_tools())
            elif args.command == "call":
                ok = await call_by_name(mcp, args.name, args.arguments)
            elif args.command == "whoami":
                await whoami(mcp, login)
            else:
                await tool_prompt(mcp, login)
        if args.show_token and login.access_token:
            out.print(f"access token: {login.access_token}", highlight=False)
        return 0 if ok else 1


def report(failure: ClientError) -> None:
    ui.print(f"[red]✗ {failure.cause}[/red] — {failure.fix}", highlight=False, soft_wrap=True)


def main() -> None:
    args = parse_args()
    # Library log records are not for the user: failures reach them as one line each.
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        code = asyncio.run(run(args))
    except ClientError as failure:
        report(failure)
        code = 1
    except KeyboardInterrupt:
        ui.print("interrupted")
        code = 130
    except Exception as bug:  # still one line for the user; --trace shows how far it got
        report(
            ClientError(
                f"unexpected {type(bug).__name__}: {bug}", "re-run with --trace and report it"
            )
        )
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
