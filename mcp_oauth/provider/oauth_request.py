"""An awaited Starlette request turned into the request objects Authlib's grants and endpoints
read: form or query parameters (checked first, see checks.py), or a JSON body for RFC 7591."""

from __future__ import annotations

import json
from collections import defaultdict

from authlib.oauth2.rfc6749 import JsonPayload, JsonRequest, OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from starlette.datastructures import FormData
from starlette.requests import ClientDisconnect, Request

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


class StarletteOAuth2Request(OAuth2Request):
    def __init__(self, method: str, uri: str, headers, items: list[tuple[str, str]]):
        super().__init__(method=method, uri=uri, headers=headers)
        self.payload = FormPayload(items)
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
        try:
            form: FormData = await request.form()
        except Exception as exc:  # malformed body: the parser's message is not for users
            raise InvalidRequestError("the form body could not be parsed") from exc
        items = list(form.multi_items())
    check_parameter_values(items)
    check_no_repeated_parameters(items)
    return items


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
