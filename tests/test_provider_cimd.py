"""Client ID Metadata Documents: a client_id that is a URL names the client's metadata, which
the provider fetches. A real local HTTP server serves the documents (the development setting
OAUTH_CIMD_ALLOW_LOOPBACK admits it, over plain http on loopback only); the fetch is an SSRF
surface, so each guard is tested as the attack it stops."""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import start_provider
from tests.oauth_helpers import REDIRECT_URI, Browser, auth_params, redeem, redirect_query

MAX_DOCUMENT_BYTES = 5 * 1024  # the promised limit, written here, not read from the code
FETCH_SECONDS = 5


class DocumentServer:
    """A local HTTP server: each path answers as configured; connections are counted, so a
    test can show the provider never connected."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.slow_paths: set[str] = set()
        self.connections = 0
        self.requests: list[str] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                if self.path in outer.slow_paths:
                    outer.release.wait(60)
                    return
                status, headers, body = outer.routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class CountingServer(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request, client_address):
                outer.connections += 1
                return True

        self.httpd = CountingServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def serve(self, path: str, document, status: int = 200, **headers) -> str:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.routes[path] = (status, {"Content-Type": "application/json", **headers}, body)
        return self.url(path)

    def document(self, path: str, **overrides) -> str:
        """A valid document at `path` (its client_id is its own URL)."""
        url = self.url(path)
        return self.serve(
            path,
            {
                "client_id": url,
                "client_name": "Document Client",
                "redirect_uris": [REDIRECT_URI],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "none",
                **overrides,
            },
        )

    def stop(self):
        self.release.set()
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def documents() -> Iterator[DocumentServer]:
    server = DocumentServer()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dev_provider(request, tmp_path_factory):
    """A provider with the development setting on: documents may live on loopback."""
    database_url = None
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgres_database")
    handle = start_provider(
        tmp_path_factory.mktemp("cimd"), database_url, {"OAUTH_CIMD_ALLOW_LOOPBACK": "1"}
    )
    yield handle
    handle.process.stop()


@pytest.fixture(scope="module")
def strict_provider(tmp_path_factory):
    """A provider as deployed: the development setting off."""
    handle = start_provider(tmp_path_factory.mktemp("cimd-strict"))
    yield handle
    handle.process.stop()


def own_path(provider, name: str) -> str:
    """A document path of this provider's own (failures are cached per URL)."""
    return f"/clients/{provider.url.rsplit(':', 1)[1]}/{name}.json"


def page_text(response: httpx.Response) -> str:
    inline = re.sub(r"</?(code|strong[^>]*)>", "", response.text)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def refusal(provider, client_id: str) -> str:
    """The page a person sees for an authorization request from this client_id: a 400 with a
    message, never a 5xx and never a redirect."""
    browser = Browser(provider.url, "alice", "password123")
    params, _ = auth_params(scope="read", client_id=client_id, resource=provider.resource)
    response = browser.http.get("/authorize", params=params)
    assert response.status_code == 400, (response.status_code, response.text)
    text = page_text(response)
    assert "This sign-in link is not valid" in text
    return text


# -- the happy path ------------------------------------------------------------------------


def test_metadata_says_documents_are_supported(strict_provider):
    metadata = httpx.get(f"{strict_provider.url}/.well-known/oauth-authorization-server").json()
    assert metadata["client_id_metadata_document_supported"] is True


def test_a_document_client_signs_in_through_consent_to_a_token(dev_provider, documents):
    path = own_path(dev_provider, "good")
    client_id = documents.document(path)
    browser = Browser(dev_provider.url, "alice", "password123")
    params, verifier = auth_params(
        scope="read write", client_id=client_id, resource=dev_provider.resource
    )
    consent = browser.authorize(decision=None, **params)
    assert consent.status_code == 200, consent.text
    text = page_text(consent)
    assert "Document Client from 127.0.0.1 wants to act on your behalf" in text
    assert "identified itself with a document at 127.0.0.1" in text
    assert "registered itself" not in text
    query = redirect_query(browser.authorize(**params))
    tokens = redeem(
        dev_provider.url,
        query["code"],
        verifier,
        client_id=client_id,
        resource=dev_provider.resource,
    )
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["scope"] == "read write"
    refreshed = httpx.post(
        f"{dev_provider.url}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens.json()["refresh_token"],
            "client_id": client_id,
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    assert documents.requests.count(path) == 1  # cached: fetched once for all of the above


# -- SSRF: where the provider will not connect ------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "[::1]", "10.0.0.1", "169.254.169.254", "[::ffff:127.0.0.1]"]
)
def test_a_document_on_a_private_or_loopback_address_is_refused(strict_provider, documents, host):
    before = documents.connections
    path = "/clients/good-but-private.json"
    documents.document(path)
    text = refusal(strict_provider, documents.url(path, "https", host))
    assert re.search(r"resolves to a (loopback|private, link-local or reserved) address", text)
    assert documents.connections == before  # no connection was even attempted


def test_plain_http_is_refused_without_the_development_setting(strict_provider, documents):
    before = documents.connections
    client_id = documents.document("/clients/plain-http.json")
    assert "must use https" in refusal(strict_provider, client_id)
    assert documents.connections == before


@pytest.mark.parametrize("host", ["10.0.0.1", "169.254.169.254", "192.168.1.1"])
def test_the_development_setting_admits_loopback_only(dev_provider, host):
    text = refusal(dev_provider, f"https://{host}/client.json")
    assert "resolves to a private, link-local or reserved address" in text


def test_a_redirect_to_a_private_address_is_not_followed(dev_provider, documents):
    path = own_path(dev_provider, "redirect")
    target = "http://169.254.169.254/latest/meta-data/"
    documents.serve(path, b"", status=302, Location=target)
    text = refusal(dev_provider, documents.url(path))
    assert "redirect, which is not followed" in text


def test_an_oversized_document_is_refused(dev_provider, documents):
    path = own_path(dev_provider, "big")
    url = documents.url(path)
    big = {"client_id": url, "redirect_uris": [REDIRECT_URI], "padding": "x" * MAX_DOCUMENT_BYTES}
    documents.serve(path, big)
    assert f"larger than {MAX_DOCUMENT_BYTES} bytes" in refusal(dev_provider, url)


def test_a_document_naming_another_client_id_is_refused(dev_provider, documents):
    path = own_path(dev_provider, "impostor")
    documents.document(path, client_id="https://trusted.example/client.json")
    assert "client_id is not its own URL" in refusal(dev_provider, documents.url(path))


def test_a_document_with_an_unsafe_redirect_uri_is_refused(dev_provider, documents):
    path = own_path(dev_provider, "unsafe-redirect")
    documents.document(path, redirect_uris=["http://evil.example/callback"])
    text = refusal(dev_provider, documents.url(path))
    assert "must use https, or http on a loopback address" in text


def test_a_document_client_cannot_claim_a_secret_method(dev_provider, documents):
    path = own_path(dev_provider, "secret")
    documents.document(path, token_endpoint_auth_method="client_secret_basic")
    assert "token_endpoint_auth_method none" in refusal(dev_provider, documents.url(path))


def test_a_slow_document_times_out_with_a_clear_page(dev_provider, documents):
    """The server never answers; the provider gives up after its time limit and says so
    (a 400 page, not a 5xx)."""
    path = own_path(dev_provider, "slow")
    documents.slow_paths.add(path)
    text = refusal(dev_provider, documents.url(path))
    assert f"not received within {FETCH_SECONDS} seconds" in text
