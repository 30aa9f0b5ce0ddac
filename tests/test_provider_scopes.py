"""What a user can grant: (requested) ∩ (the account's allowance in users.yaml) ∩ (what the
resource accepts). A client's registered scope (RFC 7591) caps only a client the operator
configured in users.yaml; MCP clients register with the scope of their first challenge and
must be able to step up later. Whatever is left out is named with its real reason."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import start_provider
from tests.oauth_helpers import REDIRECT_URI, Browser, auth_params, redeem, redirect_query

ROOT = Path(__file__).resolve().parent.parent
CAPPED_CLIENT = "read-only-tool"


def register(
    provider,
    scope: str | None,
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token"),
) -> str:
    """A public client that registered itself, as MCP clients do, with the scope of their
    first 401."""
    response = httpx.post(
        f"{provider.url}/register",
        json={
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "none",
            "grant_types": list(grant_types),
            **({"scope": scope} if scope else {}),
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["client_id"]


def page_text(response: httpx.Response) -> str:
    """The page as a person reads it: inline tags dropped, block tags a space."""
    inline = re.sub(r"</?(code|strong)>", "", response.text)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def offered(response: httpx.Response) -> set[str]:
    listed = re.search(r'<ul class="scopes">(.*?)</ul>', response.text, re.S)
    return set(re.findall(r"<code>([^<]+)</code>", listed.group(1))) if listed else set()


def granted_scope(provider, browser: Browser, client_id: str, scope: str, **extra) -> str:
    params, verifier = auth_params(scope=scope, client_id=client_id, **extra)
    query = redirect_query(browser.authorize(**params))
    response = redeem(
        provider.url, query["code"], verifier, client_id=client_id, resource=extra.get("resource")
    )
    assert response.status_code == 200, response.text
    return response.json()["scope"]


def test_a_self_registered_read_client_can_later_be_granted_read_write(provider, alice):
    """Step-up for every real MCP client: registered with `scope: read`, the client asks for
    `read write` when a tool needs write, and alice (allowed both) can grant both."""
    client_id = register(provider, "read")
    assert granted_scope(provider, alice, client_id, "read", resource=provider.resource) == "read"
    params, _ = auth_params(scope="read write", client_id=client_id, resource=provider.resource)
    consent = alice.authorize(decision=None, **params)
    assert offered(consent) == {"read", "write"}
    assert "left out" not in page_text(consent)
    assert (
        granted_scope(provider, alice, client_id, "read write", resource=provider.resource)
        == "read write"
    )


def test_a_self_registered_client_asking_only_write_is_offered_write(provider, alice):
    client_id = register(provider, "read")
    params, _ = auth_params(scope="write", client_id=client_id, resource=provider.resource)
    consent = alice.authorize(decision=None, **params)
    assert offered(consent) == {"write"}
    assert "may not grant" not in page_text(consent)


def test_bob_asking_write_is_told_it_is_his_account(provider, bob):
    """Not the client's registration, not the resource: bob's allowance in users.yaml."""
    client_id = register(provider, "read")
    params, _ = auth_params(scope="write", client_id=client_id, resource=provider.resource)
    consent = bob.authorize(decision=None, **params)
    text = page_text(consent)
    assert offered(consent) == set()
    assert "write: your account may not grant it" in text
    assert "resource does not accept" not in text and "configured" not in text
    assert re.search(r'value="approve"\s+disabled', consent.text)
    # Approving anyway (a hand-made POST) is refused with the same reason.
    refused = redirect_query(bob.authorize(**params))
    assert refused["error"] == "invalid_scope"
    assert "write: your account may not grant it" in refused["error_description"]


def test_a_scope_the_resource_does_not_accept_is_named_as_the_resources(provider, alice):
    """The provider's own /api/profile accepts only `read` (oauth_provider.load_users)."""
    client_id = register(provider, "read")
    params, _ = auth_params(
        scope="read write", client_id=client_id, resource=f"{provider.url}/api/profile"
    )
    consent = alice.authorize(decision=None, **params)
    assert offered(consent) == {"read"}
    text = page_text(consent)
    assert "write: the resource does not accept it" in text
    assert "your account" not in text


@pytest.fixture(scope="module")
def capped_provider(tmp_path_factory):
    """A provider whose users.yaml registers a client the operator caps at `read`."""
    tmp_path = tmp_path_factory.mktemp("capped")
    users = yaml.safe_load((ROOT / "users.yaml").read_text())
    users["clients"].append(
        {
            "client_id": CAPPED_CLIENT,
            "client_name": "Read-only tool",
            "token_endpoint_auth_method": "none",
            "redirect_uris": [REDIRECT_URI],
            "grant_types": ["authorization_code"],
            "scope": "read",
        }
    )
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump(users))
    handle = start_provider(tmp_path, args=["--users", str(path)])
    yield handle
    handle.process.stop()


def test_an_operator_client_is_capped_by_its_configuration_and_says_so(capped_provider):
    alice = Browser(capped_provider.url, "alice", "password123")
    resource = capped_provider.resource
    params, _ = auth_params(scope="read write", client_id=CAPPED_CLIENT, resource=resource)
    consent = alice.authorize(decision=None, **params)
    assert offered(consent) == {"read"}
    text = page_text(consent)
    assert "write: this server's operator has not configured this application for it" in text
    assert "your account" not in text
    assert (
        granted_scope(capped_provider, alice, CAPPED_CLIENT, "read write", resource=resource)
        == "read"
    )


def test_an_operator_client_asking_only_beyond_its_configuration_blames_the_configuration(
    capped_provider,
):
    alice = Browser(capped_provider.url, "alice", "password123")
    params, _ = auth_params(
        scope="write", client_id=CAPPED_CLIENT, resource=capped_provider.resource
    )
    consent = alice.authorize(decision=None, **params)
    assert offered(consent) == set()
    text = page_text(consent)
    assert "write: this server's operator has not configured this application for it" in text
    assert "your account" not in text
    refused = redirect_query(alice.authorize(**params))
    assert refused["error"] == "invalid_scope"
    assert "not configured this application" in refused["error_description"]
