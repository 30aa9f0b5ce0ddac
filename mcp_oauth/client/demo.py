"""`client.py --demo`: every tool × alice, bob and admin, checked against users.yaml.

Each account signs in headlessly through the provider's real pages and calls every tool the
way a user would (so a denied scope goes through the real step-up), and the table says who
was allowed what and why. Expected: a tool needing scope S is allowed exactly for the accounts
users.yaml grants S; the demo fails (non-zero exit) on any other outcome.

When the provider (:9000) or the MCP server (:8000) is not running at its default address,
the demo starts it, and stops what it started at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import mcp_types
from rich.console import Console
from rich.table import Table

from mcp_oauth.client.errors import ClientError
from mcp_oauth.client.identity import ClientIdentity
from mcp_oauth.client.login import Login, NotAllowed
from mcp_oauth.client.login_modes import PasswordLogin
from mcp_oauth.client.session import McpSession
from mcp_oauth.client.token_cache import TokenCache
from mcp_oauth.client.tools import result_text, scope_needed, tool_requirements
from mcp_oauth.client.trace import Trace
from mcp_oauth.common.scopes import scope_str
from mcp_oauth.common.users_yaml import UsersFileError, account_scopes, read_users_yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository: users.yaml and the two servers
# The documented test accounts (README, users.yaml); development passwords, not secrets.
DEMO_ACCOUNTS = {"alice": "password123", "bob": "secret456", "admin": "admin789"}
DEFAULT_MCP_URL = "http://localhost:8000/mcp"
SERVERS = [  # what the demo starts when it is not running: (script, URL answering 200 when ready)
    ("oauth_provider.py", "http://localhost:9000/.well-known/oauth-authorization-server"),
    ("mcp_resource_server.py", "http://localhost:8000/.well-known/oauth-protected-resource/mcp"),
]
SAMPLE_VALUES = {"string": "demo", "integer": 1, "number": 1, "boolean": True}


@dataclass
class Outcome:
    allowed: bool
    why: str


async def run_demo(url: str, out: Console, ui: Console, trace: Trace | None) -> bool:
    """Print the tool × account table; True when every cell is what users.yaml grants."""
    allowed = allowed_scopes()
    with servers_running(url, ui):
        outcomes: dict[tuple[str, str], Outcome] = {}
        needs: dict[str, str] = {}
        for account, password in DEMO_ACCOUNTS.items():
            with ui.status(f"Signing in as {account} and trying every tool …"):
                results, needs = await try_every_tool(url, account, password, trace)
            outcomes |= {(tool, account): outcome for tool, outcome in results.items()}
    table = Table(title=f"Who may call what at {url}")
    table.add_column("tool", style="bold")
    table.add_column("needs")
    for account in DEMO_ACCOUNTS:
        table.add_column(f"{account}\n({scope_str(allowed[account])})")
    all_as_expected = True
    for tool, need in needs.items():
        cells = []
        for account in DEMO_ACCOUNTS:
            outcome = outcomes[(tool, account)]
            scope = scope_needed(need)
            expected = scope is None or scope in allowed[account]
            all_as_expected &= outcome.allowed == expected
            mark = "[green]✓ allowed[/green]" if outcome.allowed else "[yellow]✗ denied[/yellow]"
            unexpected = (
                "" if outcome.allowed == expected else "\n[bold red]≠ users.yaml[/bold red]"
            )
            cells.append(f"{mark}\n[dim]{outcome.why}[/dim]{unexpected}")
        table.add_row(tool, need, *cells)
    out.print(table)
    if all_as_expected:
        out.print("[green]Every outcome matches the scopes users.yaml grants.[/green]")
    else:
        out.print(
            "[bold red]Some outcomes differ from what users.yaml grants (≠ above).[/bold red]"
        )
    return all_as_expected


async def try_every_tool(
    url: str, account: str, password: str, trace: Trace | None
) -> tuple[dict[str, Outcome], dict[str, str]]:
    hooks = trace.hooks() if trace else {}
    async with httpx2.AsyncClient(timeout=30, event_hooks=hooks) as http:
        mode = PasswordLogin(account, password, trace)
        login = Login(http, url, TokenCache(url, account), mode, ClientIdentity(), account)
        async with McpSession(login, trace) as mcp:
            tools = await mcp.list_tools()
            needs = await tool_requirements(mcp, tools)
            return {tool.name: await try_tool(mcp, tool) for tool in tools}, needs


async def try_tool(mcp: McpSession, tool: mcp_types.Tool) -> Outcome:
    try:
        result = await mcp.call_tool(tool.name, sample_arguments(tool.input_schema))
    except NotAllowed as refusal:
        return Outcome(False, f"lacks {refusal.scope}; granted {refusal.issued or 'nothing'}")
    if result.is_error:  # the tool ran and refused the sample arguments: access was granted
        return Outcome(True, f"ran; it said: {result_text(result)}")
    return Outcome(True, "ran")


def sample_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """A value for each required argument: the first of an enum, else one of the declared type."""
    properties = schema.get("properties", {})
    return {name: sample_value(properties.get(name, {})) for name in schema.get("required", [])}


def sample_value(prop: dict[str, Any]) -> Any:
    if prop.get("enum"):
        return prop["enum"][0]
    return SAMPLE_VALUES.get(prop.get("type", "string"), "demo")


def allowed_scopes() -> dict[str, frozenset[str]]:
    """What users.yaml lets each demo account receive (the provider grants requested ∩ these)."""
    path = Path(os.environ.get("OAUTH_USERS_FILE", ROOT / "users.yaml"))
    try:
        accounts = account_scopes(read_users_yaml(path))
    except UsersFileError as exc:
        raise ClientError(str(exc), "run the demo from the repository, next to users.yaml") from exc
    missing = [name for name in DEMO_ACCOUNTS if name not in accounts]
    if missing:
        raise ClientError(
            f"{path} has no account {', '.join(missing)}", "restore the test accounts"
        )
    return {name: accounts[name] for name in DEMO_ACCOUNTS}


# --- Starting the servers the demo needs ------------------------------------------------------


@contextmanager
def servers_running(url: str, ui: Console) -> Iterator[None]:
    """Start the provider and the MCP server if they are not answering; stop what was started."""
    with ExitStack() as started:
        if url == DEFAULT_MCP_URL:
            for script, ready in SERVERS:
                if not answers(ready):
                    started.enter_context(server(script, ready, ui))
        yield


def answers(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=2).status_code == 200
    except httpx2.TransportError:
        return False


@contextmanager
def server(script: str, ready: str, ui: Console) -> Iterator[None]:
    """Run `python <script>` from the repository until the block ends; its log in a temp file."""
    with tempfile.NamedTemporaryFile(
        prefix=f"{Path(script).stem}-", suffix=".log", delete=False
    ) as sink:
        process = subprocess.Popen([sys.executable, script], cwd=ROOT, stdout=sink, stderr=sink)
    log = sink.name
    ui.print(f"Started {script} (pid {process.pid}, log {log})")
    try:
        deadline = time.monotonic() + 30
        while not answers(ready):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ClientError(
                    f"{script} did not start (see {log})", f"start it yourself: python {script}"
                )
            time.sleep(0.2)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        ui.print(f"Stopped {script}")
