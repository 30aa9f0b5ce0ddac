"""Synchronous code run on the event loop, in a greenlet, that can still wait for I/O.

Authlib's grants are synchronous and call the store, which blocks. Run in a worker thread,
each token request paid a hop there and back and the GIL hand-offs between threads: in a
profile of client_credentials about a quarter of the provider's time, more than the grant
itself. A grant that opts in (grants.py, RUNS_ON_EVENT_LOOP) runs instead on the event loop
inside a greenlet (`run_sync`); where the store must wait (a group commit, a PostgreSQL read,
a rare write), it calls `wait_for(awaitable)`, which switches back to the event loop until
the awaitable is done, so other requests run meanwhile. Outside `run_sync` (worker threads,
the pages) `on_event_loop()` is False and the store blocks as it always did.

The same technique as SQLAlchemy's asyncio extension (greenlet_spawn / await_only), kept to
these few lines so as not to depend on that module's private names; but the greenlets are
kept and reused (a new greenlet's first switch costs about 8 µs, a switch into an idle one
0.4 µs, measured here: a sixth of a client_credentials request's work on the event loop).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet
from starlette.concurrency import run_in_threadpool

Result = TypeVar("Result")
MAX_IDLE = 64  # idle greenlets kept per thread for the next run_sync (more are let go)
# What a greenlet hands its caller: the function's result, what it raised, or an awaitable.
RETURNED, RAISED, WAITS = "returned", "raised", "waits"


class _LoopGreenlet(greenlet.greenlet):
    """A greenlet of run_sync: runs one function after another, each for one caller (its
    parent, the event loop's task), handing back what the function returned or raised."""

    def __init__(self) -> None:
        super().__init__(self._serve)
        self.switch()  # started without arguments (those of a start are held while it lives)

    @staticmethod
    def _serve() -> None:
        outcome: list = []  # emptied by the caller once read: an idle greenlet keeps nothing
        while True:
            fn, args = greenlet.getcurrent().parent.switch(outcome)
            outcome = [RETURNED, None]
            try:
                outcome[1] = fn(*args)
            except greenlet.GreenletExit:
                raise  # the greenlet itself is being let go
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
                outcome[:] = RAISED, exc
            del fn, args


_idle = threading.local()  # greenlets belong to the thread that made them


def on_event_loop() -> bool:
    """Whether this code runs inside run_sync (so it must not block)."""
    return isinstance(greenlet.getcurrent(), _LoopGreenlet)


async def run_sync(fn: Callable[..., Result], *args: Any) -> Result:
    """`fn(*args)` on the event loop; each `wait_for` inside it is awaited here."""
    idle: list[_LoopGreenlet] = _idle.__dict__.setdefault("greenlets", [])
    child = idle.pop() if idle else _LoopGreenlet()
    parent = greenlet.getcurrent()
    child.parent = parent
    child.gr_context = parent.gr_context  # the task's context variables
    kind, value = message = child.switch(fn, args)
    while kind == WAITS:  # fn waits for `value`, an awaitable
        try:
            result = await value
        except BaseException as exc:  # noqa: BLE001 - raised where fn waits, cancellation too
            kind, value = message = child.throw(exc)
        else:
            kind, value = message = child.switch(result)
    message.clear()
    if len(idle) < MAX_IDLE:
        idle.append(child)
    if kind == RAISED:
        raise value
    return value


def wait_for(awaitable: Awaitable[Result]) -> Result:
    """The result of `awaitable`, from synchronous code inside run_sync."""
    current = greenlet.getcurrent()
    if not isinstance(current, _LoopGreenlet):
        getattr(awaitable, "close", lambda: None)()  # a coroutine that will never run
        raise RuntimeError("wait_for outside run_sync")
    return current.parent.switch([WAITS, awaitable])


def off_loop(fn: Callable[..., Result], *args: Any) -> Result:
    """`fn(*args)`, which may block: in a worker thread when called inside run_sync,
    directly otherwise."""
    if on_event_loop():
        return wait_for(run_in_threadpool(fn, *args))
    return fn(*args)
