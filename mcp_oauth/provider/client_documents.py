"""Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document; the MCP
2026-07-28 revision's preferred client identification): a client_id that is an https URL
names the client's metadata, fetched from that URL when the client is first seen.

The URL is chosen by whoever sends an authorization request, so the fetch is guarded
against server-side request forgery (CIMD §6.5): https only; the host is resolved once and
every address must be globally routable (no private, loopback, link-local, multicast or
reserved address), and the connection goes to the address that was checked (TLS still
verifies the host name), so DNS rebinding cannot swap it; no proxy from the environment; no
redirect is followed; the answer must be a 200 of at most MAX_DOCUMENT_BYTES, read within
FETCH_SECONDS. At most MAX_CONCURRENT_FETCHES run at once, so slow documents cannot occupy
the workers other requests need. Documents are cached as their Cache-Control max-age says,
within CACHE_SECONDS_BOUNDS; failures are remembered for FAILURE_CACHE_SECONDS. The
development setting `allow_loopback` admits loopback addresses, and plain http to them.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from authlib.oauth2.rfc6749.errors import InvalidClientError, OAuth2Error
from cachetools import TLRUCache

from mcp_oauth.provider.client_checks import check_document_url, document_address_problem
from mcp_oauth.provider.records import ClientRecord

MAX_DOCUMENT_BYTES = 5 * 1024
FETCH_SECONDS = 5.0
MAX_CONCURRENT_FETCHES = 4
CACHE_SECONDS_DEFAULT = 300
CACHE_SECONDS_BOUNDS = (60, 3600)
FAILURE_CACHE_SECONDS = 60
MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.I)


class ClientDocumentError(InvalidClientError):
    """The client_id URL does not give a usable metadata document; the description says why
    (a person reads it on the error page)."""

    def __init__(self, reason: str):
        super().__init__(description=f"The client's metadata document was refused: {reason}.")
        self.reason = reason


@dataclass(frozen=True)
class Cached:
    client: ClientRecord | None
    reason: str
    seconds: int


def cache_seconds(cache_control: str) -> int:
    """How long a document is reused: its max-age within CACHE_SECONDS_BOUNDS (no-store or
    no-cache: the lower bound), CACHE_SECONDS_DEFAULT when it says nothing."""
    low, high = CACHE_SECONDS_BOUNDS
    if re.search(r"no-store|no-cache", cache_control, re.I):
        return low
    found = MAX_AGE.search(cache_control)
    seconds = int(found.group(1)) if found else CACHE_SECONDS_DEFAULT
    return max(low, min(high, seconds))


def checked_address(host: str, port: int, allow_loopback: bool) -> str:
    """The address to connect to: every address the host resolves to must be acceptable
    (`document_address_problem`), and the first is used."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ClientDocumentError("its host name could not be resolved") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        problem = document_address_problem(address, allow_loopback)
        if problem:
            raise ClientDocumentError(f"its host resolves to {problem}")
    first = addresses[0]
    return f"[{first}]" if first.version == 6 else str(first)


def fetch_document(url: str, allow_loopback: bool) -> tuple[object, int]:
    """The parsed document at `url` and how long to cache it, fetched as the module says."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = checked_address(parts.hostname, port, allow_loopback)
    pinned = urlunsplit((parts.scheme, f"{address}:{port}", parts.path, parts.query, ""))
    deadline = time.monotonic() + FETCH_SECONDS
    try:
        with (
            httpx.Client(timeout=FETCH_SECONDS, follow_redirects=False, trust_env=False) as http,
            http.stream(
                "GET",
                pinned,
                headers={"Host": parts.netloc, "Accept": "application/json"},
                extensions={"sni_hostname": parts.hostname},
            ) as response,
        ):
            if response.is_redirect:
                raise ClientDocumentError("its URL answers with a redirect, which is not followed")
            if response.status_code != 200:
                raise ClientDocumentError(f"its URL answered HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ClientDocumentError(f"it is larger than {MAX_DOCUMENT_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("document took too long")
            ttl = cache_seconds(response.headers.get("cache-control", ""))
    except httpx.TimeoutException as exc:
        raise ClientDocumentError(f"it was not received within {FETCH_SECONDS:g} seconds") from exc
    except httpx.HTTPError as exc:
        raise ClientDocumentError("its URL could not be reached") from exc
    try:
        return json.loads(body), ttl
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ClientDocumentError("it is not JSON") from exc


class ClientDocuments:
    """The clients identified by metadata documents, fetched and cached as the module says."""

    def __init__(self, allow_loopback: bool = False):
        self.allow_loopback = allow_loopback
        self._cache: TLRUCache = TLRUCache(maxsize=1024, ttu=lambda _, v, now: now + v.seconds)
        self._lock = threading.Lock()  # cachetools caches are not thread-safe
        self._fetches = threading.BoundedSemaphore(MAX_CONCURRENT_FETCHES)

    @staticmethod
    def identifies(client_id: str) -> bool:
        """Whether a client_id names a metadata document (the rest are registered ids)."""
        return client_id.startswith(("https://", "http://"))

    def client(self, url: str, make_client: Callable[[str, object], ClientRecord]) -> ClientRecord:
        """The client the document at `url` describes; `make_client` validates the document
        (client_checks.document_metadata). Raises ClientDocumentError."""
        try:
            check_document_url(url, self.allow_loopback)
        except OAuth2Error as error:
            raise ClientDocumentError(error.description) from error
        with self._lock:
            cached = self._cache.get(url)
        if cached is None:
            cached = self._fetch(url, make_client)
            if cached is None:
                raise ClientDocumentError("too many documents are being fetched; try again")
            with self._lock:
                self._cache[url] = cached
        if cached.client is None:
            raise ClientDocumentError(cached.reason)
        return cached.client

    def _fetch(self, url: str, make_client) -> Cached | None:
        if not self._fetches.acquire(blocking=False):
            return None
        try:
            document, seconds = fetch_document(url, self.allow_loopback)
            return Cached(make_client(url, document), "", seconds)
        except ClientDocumentError as error:
            return Cached(None, error.reason, FAILURE_CACHE_SECONDS)
        except OAuth2Error as error:  # the document's metadata failed a check
            return Cached(None, error.description or error.error, FAILURE_CACHE_SECONDS)
        finally:
            self._fetches.release()
