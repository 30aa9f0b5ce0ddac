"""SECURITY.md promises of the authorization server that no other test drove through the
running server (issue 17): device codes that expire or were decided, the admin API for
resource-server clients only, users.yaml allowances at every refresh, secrets stored only as
hashes. Each test is the attack on the real provider over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select, update

from mcp_oauth.provider.device_page import INVALID_CODE
from mcp_oauth.provider.hashed_secrets import secret_hash
from mcp_oauth.provider.storage.schema import clients, device_codes
from tests.conftest import start_provider
from tests.oauth_helpers import Browser
from tests.support import ROOT
from tests.test_security import (
    HTTP,
    database,
    device_poll,
    device_start,
    introspect,
    refresh,
    register,
    tokens_for,
)


def code_entry(browser: Browser, user_code: str) -> httpx.Response:
    """The device page's first step: the user code typed in, answered by the consent page
    (or by the code form again, with its error)."""
    fields = browser.form_fields(browser.http.get("/device", params={"user_code": user_code}))
    return browser.http.post("/device", data=fields)


def decide(browser: Browser, consent: httpx.Response, decision: str) -> httpx.Response:
    fields = browser.form_fields(consent)
    fields["decision"] = decision
    return browser.http.post("/device", data=fields)


# -- device codes (RFC 8628) ---------------------------------------------------------------


def test_an_expired_user_code_shows_no_consent_and_its_device_gets_expired_token(provider, alice):
    device = device_start(provider.url)
    with database(provider) as conn:
        conn.execute(
            update(device_codes)
            .where(device_codes.c.device_code_hash == secret_hash(device["device_code"]))
            .values(expires_at=int(time.time()) - 1)
        )
    entry = code_entry(alice, device["user_code"])
    assert entry.status_code == 400 and INVALID_CODE in entry.text
    assert 'name="decision"' not in entry.text  # no consent form for a dead code
    polled = device_poll(provider.url, device["device_code"])
    assert polled.status_code == 400 and polled.json()["error"] == "expired_token"


def test_a_user_code_is_decided_once(provider, alice, bob):
    """After alice approved, neither she (a second tab) nor anyone else gets the consent page
    for that code again, a stale consent form cannot turn it into a denial, and the device
    gets alice's tokens."""
    device = device_start(provider.url)
    first = code_entry(alice, device["user_code"])
    stale = code_entry(alice, device["user_code"])  # a second tab, opened before deciding
    assert 'name="decision"' in first.text and 'name="decision"' in stale.text
    assert "Device connected" in decide(alice, first, "approve").text
    for browser in (alice, bob):
        again = code_entry(browser, device["user_code"])
        assert again.status_code == 400 and INVALID_CODE in again.text
        assert 'name="decision"' not in again.text
    flipped = decide(alice, stale, "deny")
    assert flipped.status_code == 400 and INVALID_CODE in flipped.text
    tokens = device_poll(provider.url, device["device_code"])
    assert tokens.status_code == 200, tokens.text
    assert introspect(provider.url, tokens.json()["access_token"])["username"] == "alice"


# -- the admin API ---------------------------------------------------------------------------


def test_the_admin_api_refuses_a_client_that_is_not_a_resource_server(provider, bob):
    """Any confidential client can authenticate; only resource-server clients may list who
    holds access or revoke a user (SECURITY.md)."""
    token = tokens_for(provider.url, bob, scope="read")["access_token"]
    other = register(provider.url, client_name="nosy app", redirect_uris=["https://app.example/cb"])
    auth = (other["client_id"], other["client_secret"])
    revoke = HTTP.post(f"{provider.url}/admin/revoke-user", data={"username": "bob"}, auth=auth)
    assert revoke.status_code == 403 and revoke.json()["error"] == "invalid_client"
    grants = HTTP.get(f"{provider.url}/admin/grants", auth=auth)
    assert grants.status_code == 403 and "grants" not in grants.json()
    assert introspect(provider.url, token)["active"] is True


# -- secrets at rest -------------------------------------------------------------------------


def test_device_codes_and_client_secrets_are_stored_only_as_hashes(provider):
    device = device_start(provider.url)
    client = register(provider.url, client_name="web app", redirect_uris=["https://a.example/cb"])
    with database(provider) as conn:
        dump = "\n".join(
            repr(row)
            for table in (device_codes, clients)
            for row in conn.execute(select(table)).all()
        )
    for secret in (device["device_code"], client["client_secret"]):
        assert secret not in dump
        assert secret_hash(secret) in dump


# -- users.yaml applies at every refresh ------------------------------------------------------


@pytest.fixture
def users_file_provider(tmp_path):
    """A provider reading its own copy of users.yaml, which the test may change."""
    users = tmp_path / "users.yaml"
    shutil.copy(ROOT / "users.yaml", users)
    handle = start_provider(tmp_path, args=["--users", str(users)])
    yield handle, users
    handle.process.stop()


def set_scopes(users: Path, username: str, scopes: list[str]) -> None:
    document = yaml.safe_load(users.read_text())
    document["users"][username]["scopes"] = scopes
    users.write_text(yaml.safe_dump(document))


def test_a_refresh_gets_only_what_users_yaml_allows_now(users_file_provider):
    """The operator takes `write` away from alice: her next refresh carries `read` only,
    although the refresh token was issued for `read write`."""
    handle, users = users_file_provider
    issued = tokens_for(handle.url, Browser(handle.url, "alice", "password123"))
    assert issued["scope"] == "read write"
    set_scopes(users, "alice", ["read"])
    handle.restart()
    refreshed = refresh(handle.url, issued["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["scope"] == "read"
    assert introspect(handle.url, refreshed.json()["access_token"])["scope"] == "read"
