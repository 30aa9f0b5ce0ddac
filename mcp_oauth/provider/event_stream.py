"""The provider as a Shared Signals transmitter: its metadata, streams and poll endpoint.

- `/.well-known/ssf-configuration` (SSF 1.0 §7): who transmits, its keys, how to receive.
- `/ssf/stream` (SSF 1.0 §8.1.1): a resource-server client creates (POST), reads (GET) or
  deletes (DELETE) a stream of its own; each receiver process has its own.
- `/ssf/poll/{stream_id}` (RFC 8936): acknowledge what was received, get what follows, waiting
  up to LONG_POLL_SECONDS for it unless `returnImmediately`.

Only resource-server clients (users.yaml `resource_server: true`, the rule of introspection
and the admin API) may use them, authenticated with HTTP Basic (client_secret_basic): any other
answer is 401 `invalid_client`, or 403 for a client that is not a resource server. A stream
whose unacknowledged events were pruned answers 409 `events_lost`, so its receiver falls back
and creates a new stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749.errors import OAuth2Error
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_oauth.common.security_events import EVENT_TYPES, POLL_DELIVERY
from mcp_oauth.provider.authorization_server import AuthorizationServer
from mcp_oauth.provider.checks import basic_credentials
from mcp_oauth.provider.records import ClientRecord
from mcp_oauth.provider.security_event_tokens import signed_event
from mcp_oauth.provider.storage.security_events import Stream

log = logging.getLogger("oauth_provider")

LONG_POLL_SECONDS = 15.0  # the longest a poll waits for an event (RFC 8936 §2.4 long polling)
RECHECK_SECONDS = 5.0  # a waiting poll looks at the log this often even without a wake-up
MAX_EVENTS = 100  # the most SETs in one answer, whatever maxEvents asks
NO_STORE = {"Cache-Control": "no-store"}
EVENTS_LOST = (
    "events this stream had not acknowledged were pruned: create a new stream, and treat "
    "what was cached as unconfirmed"
)


def error(status: int, code: str, description: str) -> JSONResponse:
    return JSONResponse({"error": code, "error_description": description}, status, NO_STORE)


@dataclass(frozen=True)
class PollRequest:
    ack: list[str]
    set_errs: dict[str, Any]
    max_events: int
    return_immediately: bool


def poll_request(body: bytes) -> PollRequest:
    """RFC 8936 §2.4: a JSON object with optional `ack` (jtis), `setErrs` (jti → error),
    `maxEvents` (≥ 0) and `returnImmediately`; ValueError saying what is wrong."""
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    ack, set_errs = data.get("ack", []), data.get("setErrs", {})
    max_events = data.get("maxEvents", MAX_EVENTS)
    immediately = data.get("returnImmediately", False)
    if not isinstance(ack, list) or not all(isinstance(jti, str) for jti in ack):
        raise ValueError("ack must be a list of jti strings")
    if not isinstance(set_errs, dict):
        raise ValueError("setErrs must be an object of jti to error")
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 0:
        raise ValueError("maxEvents must be a non-negative integer")
    if not isinstance(immediately, bool):
        raise ValueError("returnImmediately must be true or false")
    if len(ack) + len(set_errs) > 10 * MAX_EVENTS:
        raise ValueError(f"at most {10 * MAX_EVENTS} acknowledgements at a time")
    return PollRequest(ack, set_errs, min(max_events, MAX_EVENTS), immediately)


class EventStream:
    """The transmitter's HTTP endpoints (see the module docstring)."""

    def __init__(self, server: AuthorizationServer):
        self.server = server
        self.events = server.store.events
        self.issuer = server.issuer_url

    def configuration(self) -> dict[str, Any]:
        """SSF 1.0 §7.1 transmitter metadata."""
        return {
            "spec_version": "1_0",
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks.json",
            "delivery_methods_supported": [POLL_DELIVERY],
            "configuration_endpoint": f"{self.issuer}/ssf/stream",
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
            "default_subjects": "ALL",
        }

    async def serve_configuration(self, request: Request) -> Response:
        return JSONResponse(self.configuration())

    async def _client(self, request: Request) -> tuple[ClientRecord | None, Response | None]:
        """The authenticated resource-server client, or the OAuth error (RFC 6749 §5.2)."""
        try:
            oauth_request = self.server.make_request(
                request.method, request.url.path, request, [], basic_credentials(request.headers)
            )
            client = await run_in_threadpool(
                self.server.authenticate_resource_server, oauth_request
            )
        except OAuth2Error as exc:
            return None, self.server.error_response(exc)
        return client, None

    def _stream_configuration(self, stream: Stream) -> dict[str, Any]:
        """SSF 1.0 §8.1.1 stream configuration."""
        return {
            "stream_id": stream.stream_id,
            "iss": self.issuer,
            "aud": stream.client_id,
            "events_supported": list(EVENT_TYPES),
            "events_requested": list(EVENT_TYPES),
            "events_delivered": list(EVENT_TYPES),
            "delivery": {
                "method": POLL_DELIVERY,
                "endpoint_url": f"{self.issuer}/ssf/poll/{stream.stream_id}",
            },
            "description": "revocations of tokens this provider issued",
        }

    async def serve_stream(self, request: Request) -> Response:
        """Create (POST), read (GET) or delete (DELETE) a stream of the calling client."""
        client, refused = await self._client(request)
        if refused:
            return refused
        assert client is not None
        if request.method == "POST":
            if reason := creation_refusal(await request.body()):
                return error(400, "invalid_request", reason)
            stream = await run_in_threadpool(self.events.create_stream, client.client_id)
            log.info("event stream %s created for %s", stream.stream_id, client.client_id)
            return JSONResponse(self._stream_configuration(stream), 201, NO_STORE)
        stream_id = request.query_params.get("stream_id", "")
        if request.method == "DELETE":
            deleted = await run_in_threadpool(
                self.events.delete_stream, stream_id, client.client_id
            )
            return Response(status_code=204) if deleted else _no_such_stream()
        stream = await run_in_threadpool(self.events.stream, stream_id, client.client_id)
        if stream is None:
            return _no_such_stream()
        return JSONResponse(self._stream_configuration(stream), headers=NO_STORE)

    async def serve_poll(self, request: Request) -> Response:
        """RFC 8936 §2.4: acknowledge, then answer the events that follow (long polling)."""
        client, refused = await self._client(request)
        if refused:
            return refused
        assert client is not None
        stream_id = request.path_params["stream_id"]
        stream = await run_in_threadpool(self.events.stream, stream_id, client.client_id)
        if stream is None:
            return _no_such_stream()
        if stream.events_lost:
            return error(409, "events_lost", EVENTS_LOST)
        try:
            asked = poll_request(await request.body())
        except ValueError as exc:
            return error(400, "invalid_request", str(exc))
        if asked.set_errs:
            log.warning("receiver %s could not use events %s", client.client_id, asked.set_errs)
        done = asked.ack + list(asked.set_errs)
        position = await run_in_threadpool(self.events.acknowledge, stream_id, done)
        found, more = await self._wait_for_events(position, asked)
        key, audience = self.server.minter.signing_key, client.client_id
        sets = {event.jti: signed_event(key, self.issuer, audience, event) for event in found}
        return JSONResponse({"sets": sets, "moreAvailable": more}, headers=NO_STORE)

    async def _wait_for_events(self, position: int, asked: PollRequest):
        """The events after `position`, waiting for one up to LONG_POLL_SECONDS."""
        if asked.max_events == 0:
            return [], False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LONG_POLL_SECONDS
        while True:
            generation = self.events.doorbell.generation
            found, more = await run_in_threadpool(self.events.pending, position, asked.max_events)
            remaining = deadline - loop.time()
            if found or asked.return_immediately or remaining <= 0:
                return found, more
            await self.events.doorbell.wait(generation, min(remaining, RECHECK_SECONDS))


def creation_refusal(body: bytes) -> str | None:
    """Why a stream creation request (SSF 1.0 §8.1.1.1) cannot be honoured; None if it can:
    an empty body or a JSON object whose `delivery.method`, if any, is poll delivery."""
    if not body.strip():
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "the body must be a JSON object"
    if not isinstance(data, dict):
        return "the body must be a JSON object"
    delivery = data.get("delivery", {})
    if not isinstance(delivery, dict) or delivery.get("method", POLL_DELIVERY) != POLL_DELIVERY:
        return f"only poll delivery ({POLL_DELIVERY}) is offered"
    return None


def _no_such_stream() -> JSONResponse:
    return error(404, "not_found", "no such stream for this client")
