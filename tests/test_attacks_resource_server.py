"""Attacks on the resource server by callers who want to degrade it for everyone else.

Each test is the attack itself, run against the real servers over real HTTP: an anonymous
attacker floods the MCP endpoint while a victim with fresh tokens keeps working. A token that
was never shown to the resource server is "uncached": its first call needs the provider, which
is exactly what a flood that starts the provider backoff would break.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from fastmcp import Client
from sqlalchemy import create_engine, insert

from mcp_oauth.client.headless import obtain_tokens
from mcp_oauth.resource_server.gate import MAX_BEARER_TOKEN_BYTES
from mcp_oauth.resource_server.store import metadata, notes, records
from tests.conftest import RS_SECRET, start_provider, start_resource_server
from tests.support import ROOT, ServerProcess, free_port

VICTIM_CALLS = 6
ACCEPT = "application/json, text/event-stream"

MALFORMED_TOKENS = [
    b"abc\tdef",  # a tab is legal in a header value, never in a b64token
    b"x" * (70 * 1024),  # far beyond any real token
    b"a" * (MAX_BEARER_TOKEN_BYTES + 1),  # just beyond the cap
    b"tok$en;drop",
    b'tok"en',
    b"tok en",
    b"=abc",
    b"t\xc3\xa9l\xc3\xa9phone",
]


@dataclass
class Servers:
    issuer: str
    rs: ServerProcess
    mcp_url: str
    spare_url: str = ""
    """Another resource the provider issues tokens for, where a test starts its own server."""

    def fresh_tokens(self, count: int, scope: str = "read") -> list[str]:
        """`count` access tokens of alice's this resource server has never seen (so never
        cached)."""

        async def sign_in() -> list[str]:
            tokens = []
            for _ in range(count):
                answer = await obtain_tokens(
                    self.issuer, "alice", "password123", scope=scope, resource=self.mcp_url
                )
                tokens.append(answer["access_token"])
            return tokens

        return asyncio.run(sign_in())

    def metrics(self) -> dict:
        origin = self.mcp_url.removesuffix("/mcp")
        return httpx.get(f"{origin}/metrics").json()["token_verifier"]


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def profile_call(url: str, token: bytes | str) -> httpx.Response:
    """One tools/call of get_user_profile (needs any valid token) with this bearer token."""
    raw = token.encode() if isinstance(token, str) else token
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_user_profile", "arguments": {}},
    }
    headers = [(b"accept", ACCEPT.encode()), (b"authorization", b"Bearer " + raw)]
    return httpx.post(url, json=body, headers=headers, timeout=30)


class Flood:
    """An attacker sending `tokens` in turn, one request at a time, until stopped (and not
    before each was sent once)."""

    def __init__(self, url: str, tokens: list[bytes], pause: float = 0.02):
        self.url, self.tokens, self.pause = url, tokens, pause
        self.answers: list[httpx.Response] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sent = 0
        while not self._stop.is_set():
            self.answers.append(profile_call(self.url, self.tokens[sent % len(self.tokens)]))
            sent += 1
            self._stop.wait(self.pause)

    def __enter__(self) -> Flood:
        self._thread.start()
        # The attack is under way before the victim's first call.
        while not self.answers:
            self._stop.wait(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        # Every attack token is sent at least once, however quickly the victim was done.
        while len(self.answers) < len(self.tokens) and self._thread.is_alive():
            self._stop.wait(0.01)
        self._stop.set()
        self._thread.join()


def assert_invalid_token_challenges(answers: list[httpx.Response]) -> None:
    for answer in answers:
        assert answer.status_code == 401, answer.text
        challenge = answer.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer error="invalid_token"'), challenge
        assert "resource_metadata=" in challenge


def victim_keeps_working(servers: Servers, tokens: list[str], flood: Flood) -> None:
    """Each fresh token's first call succeeds while `flood` runs."""
    for token in tokens:
        response = profile_call(servers.mcp_url, token)
        assert response.status_code == 200, (response.status_code, response.text)
    # Every victim call happened during the flood, and so did more of the attack.
    assert flood.answers


# -- introspection: malformed tokens -----------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("attacks")
    port = free_port()
    mcp_url, spare_url = f"http://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{free_port()}/mcp"
    provider = start_provider(tmp, resource=f"{mcp_url},{spare_url}")
    rs = start_resource_server(
        tmp, port, {"OAUTH_PROVIDER_URL": provider.url, "MCP_RS_CLIENT_SECRET": RS_SECRET}
    )
    yield Servers(provider.url, rs, mcp_url, spare_url)
    rs.stop()
    provider.process.stop()


def test_malformed_token_flood_never_stops_fresh_tokens(servers):
    """The review's attack: malformed tokens at a steady rate used to make the provider answer
    400/413, which the resource server took for an outage (503 for every uncached token).
    Now they are refused (401 invalid_token) before any call to the provider."""
    tokens = servers.fresh_tokens(VICTIM_CALLS)
    before = servers.metrics()
    with Flood(servers.mcp_url, MALFORMED_TOKENS) as flood:
        victim_keeps_working(servers, tokens, flood)
    assert_invalid_token_challenges(flood.answers)
    after = servers.metrics()
    # Only the victim's tokens were introspected: the attacker's never left the server.
    assert after["introspections"] - before["introspections"] == VICTIM_CALLS
    assert after["introspection_failures"] == before["introspection_failures"]
    log = servers.rs.output()
    assert "Authorization server unavailable" not in log
    assert "MCP_RS_CLIENT_SECRET" not in log.split("Introspected a token", 1)[-1]


def test_each_malformed_token_is_refused_saying_why(servers):
    reasons = {
        b"abc\tdef": "characters RFC 6750 does not allow",
        b"x" * (MAX_BEARER_TOKEN_BYTES + 1): f"longer than {MAX_BEARER_TOKEN_BYTES} bytes",
    }
    for token, why in reasons.items():
        response = profile_call(servers.mcp_url, token)
        assert response.status_code == 401
        assert why in response.json()["error"]["data"]["error_description"]
    longest = "a" * MAX_BEARER_TOKEN_BYTES  # well-formed: asked about, and merely unknown
    assert "inactive" in profile_call(servers.mcp_url, longest).json()["error"]["message"]


def test_wrong_credentials_of_the_resource_server_are_an_outage_named_in_the_log(servers, tmp_path):
    """A 401 from introspection is this server's own credentials, not the token: 503 with
    Retry-After (never a 401, which would send the user to sign in again), and the log says
    which setting to check."""
    url = servers.spare_url
    env = {"OAUTH_PROVIDER_URL": servers.issuer, "MCP_RS_CLIENT_SECRET": "wrong-secret"}
    rs = start_resource_server(tmp_path, port_of(url), env)
    try:
        response = profile_call(url, "a-well-formed-token")
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
        assert "introspection refused this server's own credentials (HTTP 401" in rs.output()
        assert "check MCP_RS_CLIENT_ID and MCP_RS_CLIENT_SECRET" in rs.output()
    finally:
        rs.stop()


# -- introspection: a stricter provider that refuses some well-formed tokens --------------------


class StrictIntrospection:
    """Stands in for a provider stricter than ours about token syntax: its introspection
    answers 400 or 413 for tokens starting `junk400` / `junk413` and forwards every other
    request to our real provider (whose metadata it serves with its own introspection URL)."""

    def __init__(self, issuer: str):
        self.issuer = issuer
        self.http = httpx.Client(base_url=issuer, timeout=30)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        strict = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # the metadata document
                document = strict.http.get("/.well-known/oauth-authorization-server").json()
                document["introspection_endpoint"] = f"{strict.url}/introspect"
                self._answer(200, json.dumps(document).encode())

            def do_POST(self) -> None:  # introspection
                body = self.rfile.read(int(self.headers["Content-Length"]))
                token = parse_qs(body.decode())["token"][0]
                for status in (400, 413):
                    if token.startswith(f"junk{status}"):
                        self._answer(status, b'{"error": "invalid_request"}')
                        return
                headers = {
                    "Authorization": self.headers["Authorization"],
                    "Content-Type": self.headers["Content-Type"],
                }
                answer = strict.http.post("/introspect", content=body, headers=headers)
                self._answer(answer.status_code, answer.content)

        return Handler

    def __enter__(self) -> StrictIntrospection:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.http.close()


def test_tokens_the_provider_will_not_introspect_are_refused_not_an_outage(servers, tmp_path):
    """An introspection 400 or 413 refuses that one token (401, cached like any refusal); it
    never pauses the checks of other tokens the way an outage does."""
    url = servers.spare_url
    with StrictIntrospection(servers.issuer) as strict:
        env = {
            "OAUTH_PROVIDER_URL": servers.issuer,
            "OAUTH_METADATA_URL": f"{strict.url}/metadata",
            "MCP_RS_CLIENT_SECRET": RS_SECRET,
        }
        rs = start_resource_server(tmp_path, port_of(url), env)
        try:
            victim = Servers(servers.issuer, rs, url)
            junk = [b"junk400-" + bytes([65 + i]) * 40 for i in range(5)]
            junk += [b"junk413-" + bytes([97 + i]) * 40 for i in range(5)]
            tokens = victim.fresh_tokens(VICTIM_CALLS)
            with Flood(url, junk) as flood:
                victim_keeps_working(victim, tokens, flood)
            assert_invalid_token_challenges(flood.answers)
            refused = profile_call(url, junk[0]).json()["error"]["data"]["error_description"]
            assert refused == f"{servers.issuer} would not introspect it (HTTP 400 invalid_request)"
            assert "Authorization server unavailable" not in rs.output()
        finally:
            rs.stop()


# -- introspection: a flood of distinct well-formed tokens ---------------------------------------


def test_refusals_never_evict_an_accepted_token(servers, tmp_path):
    """Distinct well-formed tokens each cost one introspection (then a cached refusal). With a
    cache of four entries, forty of them must not push the victim's accepted token out: the
    victim's next call is still answered from the cache, without asking the provider."""
    url = servers.spare_url
    env = {
        "OAUTH_PROVIDER_URL": servers.issuer,
        "MCP_RS_CLIENT_SECRET": RS_SECRET,
        "MCP_INTROSPECTION_CACHE_SIZE": "4",
        "MCP_INTROSPECTION_CACHE_TTL": "3600",  # the victim's entry outlives the test
    }
    rs = start_resource_server(tmp_path, port_of(url), env)
    try:
        victim = Servers(servers.issuer, rs, url)
        [token] = victim.fresh_tokens(1)
        assert profile_call(url, token).status_code == 200
        junk = [f"unknown-{n}-{'z' * 40}".encode() for n in range(40)]
        assert {profile_call(url, t).status_code for t in junk} == {401}
        before = victim.metrics()
        assert profile_call(url, token).status_code == 200
        after = victim.metrics()
        assert after["introspections"] == before["introspections"]
        assert after["cache_hits"] == before["cache_hits"] + 1
        assert after["refusal_entries"] <= 4
    finally:
        rs.stop()


# -- JWT validation ------------------------------------------------------------------------------


def junk_jwt(kid: str) -> bytes:
    """A well-formed JWT naming a key id the provider never had."""

    def part(data: dict) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

    return b".".join(
        [part({"alg": "RS256", "typ": "at+jwt", "kid": kid}), part({"sub": "x"}), b"c2ln"]
    )


def test_jwt_mode_is_not_degraded_by_malformed_tokens_or_unknown_key_ids(tmp_path):
    """Checked locally, a JWT never needs the provider except for its key set: malformed tokens
    are refused before parsing, and tokens naming unknown key ids refetch the key set at most
    once per MCP_JWKS_REFETCH_INTERVAL, however many arrive."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    provider = start_provider(tmp_path, resource=url, args=["--access-token-format", "jwt"])
    env = {"OAUTH_PROVIDER_URL": provider.url, "MCP_TOKEN_VALIDATION": "jwt"}
    rs = start_resource_server(tmp_path, port, {**env, "MCP_JWKS_REFETCH_INTERVAL": "30"})
    try:
        servers = Servers(provider.url, rs, url)
        tokens = servers.fresh_tokens(VICTIM_CALLS + 1)
        assert profile_call(url, tokens.pop()).status_code == 200  # the key set is fetched
        before = servers.metrics()
        attack = MALFORMED_TOKENS + [junk_jwt(f"junk-{n}") for n in range(20)]
        started = time.monotonic()
        with Flood(url, attack) as flood:
            victim_keeps_working(servers, tokens, flood)
        elapsed = time.monotonic() - started
        assert_invalid_token_challenges(flood.answers)
        refetches = servers.metrics()["jwks_fetches"] - before["jwks_fetches"]
        assert refetches <= 1 + elapsed // 30
    finally:
        rs.stop()
        provider.process.stop()


# -- a client named like a user ------------------------------------------------------------------


def test_a_client_named_like_a_user_reads_none_of_her_data_old_or_new(tmp_path):
    """A client-credentials token's `sub` is its client id. A client whose id is `alice` must
    not read user alice's notes: neither those written now, nor those in a database written
    before owners had a kind (which stay alice's)."""
    users = yaml.safe_load((ROOT / "users.yaml").read_text())
    users["clients"].append(
        {
            "client_id": "alice",
            "client_name": "A service named like a user",
            "token_endpoint_auth_method": "client_secret_basic",
            "client_secret_env": "ALICE_CLIENT_SECRET",
            "grant_types": ["client_credentials"],
            "scope": "read write",
        }
    )
    users_file = tmp_path / "users.yaml"
    users_file.write_text(yaml.safe_dump(users))
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    provider = start_provider(
        tmp_path,
        resource=url,
        args=["--users", str(users_file)],
        env={"ALICE_CLIENT_SECRET": "alice-client-secret"},
    )
    database = f"sqlite:///{tmp_path}/old-rs.db"
    old = create_engine(database)  # the tables as written before owners had a kind
    metadata.create_all(old, tables=[records, notes])
    with old.begin() as conn:
        conn.execute(insert(notes).values(owner="alice", text="old note", created_at="x"))
    old.dispose()
    env = {
        "OAUTH_PROVIDER_URL": provider.url,
        "MCP_RS_CLIENT_SECRET": RS_SECRET,
        "MCP_DATABASE_URL": database,
    }
    rs = start_resource_server(tmp_path, port, env)
    try:
        [user_token] = Servers(provider.url, rs, url).fresh_tokens(1, scope="read write")
        client_token = httpx.post(
            f"{provider.url}/token",
            data={"grant_type": "client_credentials", "scope": "read write", "resource": url},
            auth=("alice", "alice-client-secret"),
        ).json()["access_token"]

        async def notes_of(token: str, new_note: str) -> list[str]:
            async with Client(url, auth=token) as client:
                await client.call_tool("save_user_note", {"text": new_note})
                found = (await client.call_tool("get_user_notes", {})).data["notes"]
                return sorted(note["text"] for note in found)

        assert asyncio.run(notes_of(user_token, "alice's note")) == ["alice's note", "old note"]
        assert asyncio.run(notes_of(client_token, "client's note")) == ["client's note"]
        assert asyncio.run(notes_of(user_token, "another")) == [
            "alice's note",
            "another",
            "old note",
        ]
    finally:
        rs.stop()
        provider.process.stop()
