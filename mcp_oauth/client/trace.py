"""`--trace`: every HTTP exchange of the flow, numbered like a sequence diagram, secrets redacted.

The trace hangs off the client's httpx2 clients as event hooks, so it shows what really went
over the wire — discovery, registration, the login forms, the token endpoint, MCP calls — and
not what the code meant to send. Tokens, codes, verifiers, passwords and secrets are replaced
by a marker before anything is printed.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx2
from rich.console import Console
from rich.markup import escape

REDACTED = "‹redacted›"
# Parameter and JSON member names whose values are credentials (RFC 6749, 7009, 7636, 8628, 8693).
SECRET_NAMES = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "code",
        "code_verifier",
        "password",
        "client_secret",
        "device_code",
        "token",
        "csrf_token",
        "subject_token",
        "actor_token",
        "assertion",
    }
)
BODY_LIMIT = 400


def redact_query(query: str, separator: str = "&") -> str:
    """Decoded `key=value` pairs (easier to read than percent-encoding), secrets replaced."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return separator.join(f"{k}={REDACTED if k in SECRET_NAMES else v}" for k, v in pairs)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=redact_query(parts.query))) if parts.query else url


def redact_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: REDACTED if k in SECRET_NAMES and isinstance(v, str) else redact_json(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    return value


def redact_authorization(value: str) -> str:
    scheme, _, credentials = value.partition(" ")
    return f"{scheme} {REDACTED}" if credentials else REDACTED


def shorten(text: str) -> str:
    return text if len(text) <= BODY_LIMIT else text[:BODY_LIMIT] + "…"


def describe_body(content_type: str, body: bytes) -> str:
    """A one-line, redacted rendering of a request or response body."""
    if not body:
        return ""
    if content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            return f"(invalid JSON, {len(body)} bytes)"
        if isinstance(data, dict) and data.get("jsonrpc") == "2.0" and "method" in data:
            return describe_jsonrpc(data)
        return shorten(json.dumps(redact_json(data), ensure_ascii=False))
    if content_type.startswith("application/x-www-form-urlencoded"):
        return shorten(redact_query(body.decode(errors="replace"), separator=" "))
    if content_type.startswith("text/html"):
        return f"(HTML page, {len(body)} bytes)"
    return f"({content_type or 'body'}, {len(body)} bytes)"


def describe_jsonrpc(message: dict) -> str:
    """MCP requests read best as what they ask for: `tools/call write_data {"text": …}`."""
    params = message.get("params") or {}
    if message["method"] == "tools/call":
        arguments = json.dumps(redact_json(params.get("arguments") or {}), ensure_ascii=False)
        return shorten(f"MCP tools/call {params.get('name')} {arguments}")
    return f"MCP {message['method']}"


class Trace:
    """Prints exchanges as `n client → party  METHOD url  body` / `n client ← party  status …`."""

    def __init__(self, console: Console):
        self.console = console
        self.parties: dict[str, str] = {}
        self.count = 0
        self.numbers: dict[int, int] = {}

    def name(self, url: str, party: str) -> None:
        """Label an origin in the diagram (`MCP server`, `provider`, `callback`)."""
        parts = urlsplit(url)
        self.parties[f"{parts.scheme}://{parts.netloc}"] = party

    def party(self, url: Any) -> str:
        parts = urlsplit(str(url))
        return self.parties.get(f"{parts.scheme}://{parts.netloc}", parts.netloc)

    def note(self, text: str) -> None:
        """A step that is not an HTTP exchange of this process (the browser's redirect, a wait)."""
        self.console.print(f"[dim]   · {escape(text)}[/dim]")

    def hooks(self) -> dict[str, list]:
        """Event hooks for an httpx2 client."""
        return {"request": [self.on_request], "response": [self.on_response]}

    async def on_request(self, request: httpx2.Request) -> None:
        self.count += 1
        self.numbers[id(request)] = self.count
        line = f"{request.method} {redact_url(str(request.url))}"
        auth = request.headers.get("authorization")
        if auth:
            line += f"  Authorization: {redact_authorization(auth)}"
        body = describe_body(request.headers.get("content-type", ""), _request_body(request))
        if body:
            line += f"  {body}"
        self.console.print(
            f"[bold cyan]{self.count:>3}[/] client → [bold]{escape(self.party(request.url))}[/]  "
            f"{escape(line)}",
            soft_wrap=True,
        )

    def _learn_parties(self, content_type: str, body: bytes) -> None:
        """Protected resource metadata names the authorization servers: label them `provider`."""
        if not content_type.startswith("application/json") or b"authorization_servers" not in body:
            return
        try:
            servers = json.loads(body).get("authorization_servers") or []
        except (ValueError, AttributeError):
            return
        for server in servers:
            self.name(str(server), "provider")

    async def on_response(self, response: httpx2.Response) -> None:
        number = self.numbers.pop(id(response.request), self.count)
        line = f"{response.status_code} {response.reason_phrase}"
        for header in ("WWW-Authenticate", "Location"):
            if header in response.headers:
                line += f"  {header}: {redact_url(response.headers[header])}"
        content_type = response.headers.get("content-type", "")
        if content_type.startswith(("application/json", "text/html")):
            body = await response.aread()
            line += f"  {describe_body(content_type, body)}"
            self._learn_parties(content_type, body)
        elif content_type.startswith("text/event-stream"):
            line += "  (event stream)"
        style = "green" if response.status_code < 400 else "red"
        self.console.print(
            f"[dim]{number:>3}[/] client ← [bold]{escape(self.party(response.request.url))}[/]  "
            f"[{style}]{escape(line.rstrip())}[/]",
            soft_wrap=True,
        )


def _request_body(request: httpx2.Request) -> bytes:
    try:
        return request.content
    except httpx2.RequestNotRead:  # a streamed upload: nothing to show
        return b""
