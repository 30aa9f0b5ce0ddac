"""`--workers N`: several uvicorn worker processes behind one port, sharing the database.

A request lands on whichever worker accepts its connection. To test across workers on
purpose, each request below goes over a keep-alive connection whose server side is held by a
known worker, found from /proc (the connection's socket inode in /proc/net/tcp, then which
worker's file descriptors hold that inode), so "minted at one worker, introspected at the
other" is what really happened, not what was likely.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.conftest import Provider, new_postgres_database, start_provider
from tests.oauth_helpers import Browser, auth_params, redirect_query
from tests.test_security import RS_AUTH

METADATA = "/.well-known/oauth-authorization-server"
PIN_SECONDS = 60.0  # to find a connection to each worker: workers start within seconds


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def worker_pids(provider: Provider) -> list[int]:
    """uvicorn's worker processes (spawned children; not multiprocessing's resource tracker)."""
    parent = provider.process.proc.pid
    return sorted(
        pid for pid in children(parent)
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )  # fmt: skip


def socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server side of the loopback connection from `client_port`."""
    wanted_local, wanted_remote = f"{server_port:04X}", f"{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if local == wanted_local and remote == wanted_remote:
            return fields[9]
    return None


def served_by(provider: Provider, response: httpx.Response) -> int | None:
    """The worker holding the connection `response` came over."""
    client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    inode = socket_inode(int(provider.url.rsplit(":", 1)[1]), client_port)
    for pid in worker_pids(provider):
        fds = Path(f"/proc/{pid}/fd")
        for fd in os.listdir(fds):
            try:
                if os.readlink(fds / fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


class Pinned:
    """An HTTP client whose one keep-alive connection is served by one worker. uvicorn closes a
    connection idle for 5 s (timeout_keep_alive) and a new one may land at either worker, so
    every request is preceded by a check of which worker holds the connection (a GET of the
    metadata), reconnecting until it is this one; the request then follows at once, and is
    checked too."""

    def __init__(self, provider: Provider, worker: int):
        self.provider, self.worker = provider, worker
        self.http = httpx.Client(
            base_url=provider.url,
            timeout=30,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        self.pin()

    def pin(self) -> None:
        """Make sure the connection is served by this worker: the same client (its cookies
        stay), over a new connection as often as it takes."""
        deadline = time.monotonic() + PIN_SECONDS
        while True:
            try:
                if served_by(self.provider, self.http.get(METADATA)) == self.worker:
                    return
            except httpx.TransportError:  # the idle connection was closed as the GET went out
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no connection reached worker {self.worker} in {PIN_SECONDS} s"
                )
            with contextlib.suppress(httpx.TransportError):  # the next one connects anew
                self.http.get(METADATA, headers={"connection": "close"})

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        self.pin()
        response = self.http.request(method, path, **kwargs)
        assert served_by(self.provider, response) == self.worker, "connection moved"
        return response


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def two_workers(request, tmp_path_factory) -> Iterator[tuple[Provider, Pinned, Pinned]]:
    """A provider with --workers 2; a client pinned to each worker."""
    tmp = tmp_path_factory.mktemp("workers")
    with ExitStack() as stack:
        database_url = None
        if request.param == "postgresql":
            database_url = stack.enter_context(new_postgres_database("oauth_workers"))
        provider = start_provider(tmp, database_url, args=["--workers", "2"])
        stack.callback(provider.process.stop)
        deadline = time.monotonic() + PIN_SECONDS
        while len(worker_pids(provider)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = worker_pids(provider)
        assert len(workers) == 2, workers
        yield provider, Pinned(provider, workers[0]), Pinned(provider, workers[1])


def introspect(at: Pinned, token: str) -> dict:
    response = at.request("POST", "/introspect", data={"token": token}, auth=RS_AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def client_credentials(at: Pinned, resource: str) -> str:
    form = {"grant_type": "client_credentials", "scope": "read", "resource": resource}
    response = at.request("POST", "/token", data=form, auth=RS_AUTH)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def test_sign_in_at_one_worker_consent_and_tokens_at_the_other(two_workers):
    """The session (its key is in the database), the code, the tokens and their revocation
    are the same for both workers."""
    provider, a, b = two_workers
    on_a = Browser(provider.url)
    on_a.http = a.http  # the browser's requests go over the connection pinned to worker A
    a.pin()  # the sign-in's GET and POST follow at once, before the connection could idle out
    signed_in = on_a.sign_in("alice", "password123")
    assert signed_in.status_code in (302, 303) and served_by(provider, signed_in) == a.worker
    params, verifier = auth_params(resource=provider.resource)
    b.http.cookies = httpx.Cookies(a.http.cookies)  # one browser, reaching either worker
    consent = b.request("GET", "/authorize", params=params)
    assert consent.status_code == 200 and 'name="decision"' in consent.text  # no sign-in page
    fields = on_a.form_fields(consent) | {"decision": "approve"}
    approved = b.request("POST", "/authorize", data=fields)
    code = redirect_query(approved)["code"]
    redeemed = a.request(
        "POST",
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": params["redirect_uri"],
            "client_id": params["client_id"],
            "code_verifier": verifier,
            "resource": provider.resource,
        },
    )
    assert redeemed.status_code == 200, redeemed.text
    tokens = redeemed.json()
    for worker in (a, b):
        answer = introspect(worker, tokens["access_token"])
        assert answer["active"] is True and answer["username"] == "alice"
    revoked = b.request(
        "POST", "/revoke", data={"token": tokens["refresh_token"], "client_id": "mcp-client"}
    )
    assert revoked.status_code == 200
    for worker in (a, b):
        assert introspect(worker, tokens["access_token"]) == {"active": False}
    again = a.request(
        "POST",
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "mcp-client",
        },
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_token_minted_at_either_worker_is_active_everywhere_until_revoked(two_workers):
    provider, a, b = two_workers
    for minter, other in ((a, b), (b, a)):
        token = client_credentials(minter, provider.resource)
        assert introspect(minter, token)["active"] is True
        assert introspect(other, token)["active"] is True
        revoked = other.request("POST", "/revoke", data={"token": token}, auth=RS_AUTH)
        assert revoked.status_code == 200
        assert introspect(minter, token) == {"active": False}
        assert introspect(other, token) == {"active": False}
