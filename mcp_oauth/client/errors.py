"""The one kind of failure client.py shows a user: what went wrong and how to fix it, on one line.

Every layer of the client turns the exceptions it knows (HTTP, OAuth error responses, MCP
errors) into a `ClientError` where it still knows enough to name the cause and the fix;
`client.py` prints it and exits non-zero, so a user never sees a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx2


class ClientError(Exception):
    """A failure the user can act on: `cause` says what happened, `fix` what to do about it."""

    def __init__(self, cause: str, fix: str):
        super().__init__(f"{cause} — {fix}")
        self.cause = cause
        self.fix = fix


@contextmanager
def reaching(what: str, url: str, fix: str) -> Iterator[None]:
    """Turn "could not talk to `url` at all" into a ClientError naming the server and the fix."""
    try:
        yield
    except httpx2.TransportError as exc:
        reason = type(exc).__name__ if not str(exc) else str(exc)
        raise ClientError(f"cannot reach the {what} at {url} ({reason})", fix) from exc
