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
these few lines so as not to depend on that module's private names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet
from starlette.concurrency import run_in_threadpool

Result = TypeVar("Result")


class _LoopGreenlet(greenlet.greenlet):
    """A greenlet started by run_sync; its parent is the event loop's task."""


def on_event_loop() -> bool:
    """Whether this code runs inside run_sync (so it must not block)."""
    return isinstance(greenlet.getcurrent(), _LoopGreenlet)


async def run_sync(fn: Callable[..., Result], *args: Any) -> Result:
    """`fn(*args)` on the event loop; each `wait_for` inside it is awaited here."""
    parent = greenlet.getcurrent()
    child = _LoopGreenlet(fn, parent)
    child.gr_context = parent.gr_context  # the task's context variables
    result = child.switch(*args)
    while not child.dead:  # fn waits for `result`, an awaitable
        try:
            value = await result
        except BaseException as exc:  # noqa: BLE001 - raised where fn waits, cancellation too
            result = child.throw(exc)
        else:
            result = child.switch(value)
    return result


def wait_for(awaitable: Awaitable[Result]) -> Result:
    """The result of `awaitable`, from synchronous code inside run_sync."""
    current = greenlet.getcurrent()
    if not isinstance(current, _LoopGreenlet):
        getattr(awaitable, "close", lambda: None)()  # a coroutine that will never run
        raise RuntimeError("wait_for outside run_sync")
    return current.parent.switch(awaitable)


def off_loop(fn: Callable[..., Result], *args: Any) -> Result:
    """`fn(*args)`, which may block: in a worker thread when called inside run_sync,
    directly otherwise."""
    if on_event_loop():
        return wait_for(run_in_threadpool(fn, *args))
    return fn(*args)
