"""The client's pure logic: redaction, arguments from a schema, the token cache file."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import time

import httpx2
import pytest
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from rich.console import Console

from mcp_oauth.client.demo import allowed_scopes, sample_arguments
from mcp_oauth.client.discovery import ServerMetadata
from mcp_oauth.client.errors import ClientError
from mcp_oauth.client.token_cache import SavedLogin, TokenCache
from mcp_oauth.client.tools import ask_arguments, parse_arguments, scope_needed
from mcp_oauth.client.trace import REDACTED, Trace, describe_body, redact_url

SCHEMA = {
    "type": "object",
    "properties": {
        "key": {"type": "string"},
        "count": {"type": "integer"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "action": {"enum": ["list_grants", "revoke_user"], "type": "string"},
    },
    "required": ["key", "count"],
}


# --- Trace redaction -------------------------------------------------------------------------


def test_urls_keep_public_parameters_and_lose_secrets():
    url = redact_url("http://127.0.0.1/callback?code=SECRET&state=s1&iss=http://as")
    assert "SECRET" not in url
    assert url == f"http://127.0.0.1/callback?code={REDACTED}&state=s1&iss=http://as"


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=refresh_token&refresh_token=SECRET&client_id=c",
        b"username=alice&password=SECRET&csrf_token=SECRET",
        b"grant_type=authorization_code&code=SECRET&code_verifier=SECRET",
        b"token=SECRET&token_type_hint=access_token",
        b"device_code=SECRET&grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code",
    ],
)
def test_form_bodies_are_redacted(body):
    shown = describe_body("application/x-www-form-urlencoded", body)
    assert "SECRET" not in shown and REDACTED in shown


def test_json_bodies_are_redacted_but_json_rpc_codes_are_not():
    token = json.dumps({"access_token": "SECRET", "refresh_token": "SECRET", "scope": "read"})
    assert "SECRET" not in describe_body("application/json", token.encode())
    error = json.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "x"}})
    assert "-32602" in describe_body("application/json", error.encode())


def test_trace_numbers_exchanges_and_hides_the_bearer_token():
    output = io.StringIO()
    trace = Trace(Console(file=output, width=300))
    trace.name("http://mcp.test/mcp", "MCP server")
    request = httpx2.Request(
        "POST",
        "http://mcp.test/mcp",
        headers={"Authorization": "Bearer SECRET"},
        json={"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "read_data"}},
    )
    asyncio.run(trace.on_request(request))
    asyncio.run(trace.on_response(httpx2.Response(200, json={"ok": True}, request=request)))
    lines = output.getvalue().splitlines()
    assert "SECRET" not in output.getvalue()
    assert lines[0].split()[:5] == ["1", "client", "→", "MCP", "server"]
    assert (
        f"Authorization: Bearer {REDACTED}" in lines[0] and "MCP tools/call read_data" in lines[0]
    )
    assert lines[1].split()[:6] == ["1", "client", "←", "MCP", "server", "200"]


# --- Arguments ----------------------------------------------------------------------------------


def test_key_value_arguments_take_the_schema_types():
    arguments = parse_arguments(["key=a b", "count=3", "note=7"], SCHEMA)
    assert arguments == {"key": "a b", "count": 3, "note": "7"}


def test_json_arguments_are_taken_as_they_are():
    assert parse_arguments(['{"key": "k", "count": 2}'], SCHEMA) == {"key": "k", "count": 2}


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["count=three"], "count must be integer"),
        (["nope=1"], "no argument 'nope'"),
        (["key"], "not key=value"),
        (["{nope"], "not valid JSON"),
        (["[1]"], "must be an object"),
    ],
)
def test_bad_arguments_say_what_is_wrong(words, message):
    with pytest.raises(ClientError, match=message):
        parse_arguments(words, SCHEMA)


def test_asked_arguments_skip_empty_optional_ones():
    answers = {"key": "k", "count": "4", "note": "", "action": "revoke_user"}
    asked = []

    def ask(name: str, hint: str, required: bool) -> str:
        asked.append((name, required))
        return answers[name]

    assert ask_arguments(SCHEMA, ask) == {"key": "k", "count": 4, "action": "revoke_user"}
    assert asked == [("key", True), ("count", True), ("note", False), ("action", False)]


def test_requirements_name_their_scope():
    assert scope_needed("scope write") == "write"
    assert scope_needed("any valid token") is None and scope_needed(None) is None


def test_demo_fills_required_arguments_only():
    assert sample_arguments(SCHEMA) == {"key": "demo", "count": 1}


def test_demo_reads_the_repository_users_yaml(monkeypatch):
    monkeypatch.delenv("OAUTH_USERS_FILE", raising=False)
    allowed = allowed_scopes()
    assert allowed["bob"] == {"read"} and allowed["admin"] == {"read", "write", "admin"}


# --- The token cache --------------------------------------------------------------------------


def saved_login(**tokens) -> SavedLogin:
    metadata = ServerMetadata.model_validate(
        {
            "issuer": "http://as.test",
            "authorization_endpoint": "http://as.test/authorize",
            "token_endpoint": "http://as.test/token",
            "response_types_supported": ["code"],
        }
    )
    login = SavedLogin(
        resource="http://mcp.test/mcp",
        metadata=metadata,
        client=OAuthClientInformationFull(client_id="c"),
    )
    login.store_tokens(OAuthToken(**tokens), requested_scope="read write")
    return login


def test_cache_files_are_private_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = TokenCache("http://mcp.test:8000/mcp", "alice")
    assert cache.path == tmp_path / "mcp-oauth" / "mcp.test_8000_mcp" / "alice.json"
    login = saved_login(access_token="a", refresh_token="r", expires_in=3600, scope="read")
    cache.save(login)
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.path.parent.stat().st_mode) == 0o700
    assert cache.load() == login
    cache.delete()
    assert cache.load() is None


def test_unreadable_cache_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = TokenCache("http://mcp.test/mcp", None)
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text("{not json")
    with pytest.raises(ClientError, match="delete that file"):
        cache.load()


def test_refresh_keeps_what_the_answer_leaves_out_and_refreshes_ahead_of_expiry():
    login = saved_login(access_token="a1", refresh_token="r1", expires_in=3600, scope="read")
    before = time.time()
    login.store_tokens(OAuthToken(access_token="a2", expires_in=3600))
    after = time.time()
    assert login.tokens.refresh_token == "r1" and login.issued_scope == "read"
    assert before + 3600 <= login.expires_at <= after + 3600  # counted from the answer
    assert login.refresh_at == login.expires_at - 60  # a minute ahead
    login.store_tokens(OAuthToken(access_token="a3", refresh_token="r3", expires_in=10))
    assert login.tokens.refresh_token == "r3"  # rotated
    assert login.refresh_at == login.expires_at - 1  # a tenth of a short lifetime ahead
