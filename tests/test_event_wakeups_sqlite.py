"""On SQLite, a revocation appended by one provider process wakes an event long poll waiting at
another process at once (event_wakeups.py watches the file's `PRAGMA data_version` while a poll
waits), not at the poll's next look at the log, RECHECK_SECONDS later.

Both ways two processes share one SQLite file are run: two replicas, and `--workers 2` with
each request pinned to a known worker (test_provider_workers.py). The bound on the poll's
duration is a design guarantee, not a speed claim: without a wake-up, a poll that found nothing
waits RECHECK_SECONDS before it looks at the log again, so it cannot answer with the event
sooner. The watcher itself is checked in-process on a real file: it reads nothing while no poll
waits, and a commit by another connection rings the doorbell.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest

from mcp_oauth.provider.event_stream import LONG_POLL_SECONDS, RECHECK_SECONDS
from mcp_oauth.provider.event_wakeups import WATCH_SECONDS, EventWakeups
from mcp_oauth.provider.storage.security_events import Doorbell
from mcp_oauth.resource_server.revocations import token_hash
from tests.conftest import RS_AUTH, start_provider
from tests.test_provider_workers import PIN_SECONDS, Pinned, worker_pids
from tests.test_replicas_load import replica_pair

SETTLE_SECONDS = 0.5  # lets the poll reach its wait before the revocation (see the test)
WAKE_RUNS = 3  # runs whose revocation came back too late to tell anything are repeated

Send = Callable[..., httpx.Response]  # (method, path, **kwargs) at one process


@pytest.fixture(scope="module", params=["replicas", "workers"])
def two_processes(request, tmp_path_factory) -> Iterator[tuple[Send, Send]]:
    """Senders to two provider processes on one SQLite file: replicas A and B, or the two
    workers of `--workers 2`, each reached over a connection pinned to it."""
    tmp = tmp_path_factory.mktemp(f"wakeups-{request.param}")
    if request.param == "replicas":
        with ExitStack() as stack:
            shared = f"sqlite:///{tmp}/shared.db"  # one file, two processes
            pair = stack.enter_context(contextlib.contextmanager(replica_pair)(tmp, shared))
            a = stack.enter_context(httpx.Client(base_url=pair.a.url, timeout=30))
            b = stack.enter_context(httpx.Client(base_url=pair.b.url, timeout=30))
            yield a.request, b.request
        return
    provider = start_provider(tmp, args=["--workers", "2"])
    try:
        deadline = time.monotonic() + PIN_SECONDS
        while len(worker_pids(provider)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = worker_pids(provider)
        assert len(workers) == 2, workers
        yield Pinned(provider, workers[0]).request, Pinned(provider, workers[1]).request
    finally:
        provider.process.stop()


def set_payload(signed: str) -> dict:
    part = signed.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_a_revocation_at_one_process_wakes_a_poll_waiting_at_another(two_processes):
    """The poll waits at A; B revokes; the poll answers with B's event sooner than it could
    without a wake-up. A poll never woken looks at the log at its start and then only
    RECHECK_SECONDS later, so with the revocation committed after its first look it cannot
    answer with the event before RECHECK_SECONDS from the moment it was sent: an answer
    within that bound is a wake-up. A run whose revocation was itself answered so late that
    even a poll woken within WATCH_SECONDS of it could not beat that bound tells nothing, and
    is repeated (up to WAKE_RUNS runs). (If the revocation committed before the poll's first
    look, the poll would answer at once whatever the watcher does: SETTLE_SECONDS makes that
    unlikely, and it can only make the test pass, never fail.)"""
    at_a, at_b = two_processes
    created = at_a("POST", "/ssf/stream", json={}, auth=RS_AUTH)
    assert created.status_code == 201, created.text
    poll_path = f"/ssf/poll/{created.json()['stream_id']}"
    form = {"grant_type": "client_credentials", "scope": "read"}

    def long_poll(answered: dict) -> None:
        response = at_a("POST", poll_path, json={"returnImmediately": False}, auth=RS_AUTH)
        answered.update(response=response, at=time.monotonic())

    runs = []
    for _ in range(WAKE_RUNS):
        drained = at_a("POST", poll_path, json={"returnImmediately": True}, auth=RS_AUTH).json()
        at_a("POST", poll_path, json={"ack": list(drained["sets"]), "returnImmediately": True},
             auth=RS_AUTH)  # fmt: skip
        token = at_b("POST", "/token", data=form, auth=RS_AUTH).json()["access_token"]

        answered: dict = {}
        poll_sent = time.monotonic()  # no later than the poll's first look at the log
        poller = threading.Thread(target=long_poll, args=(answered,))
        poller.start()
        time.sleep(SETTLE_SECONDS)
        revoked = at_b("POST", "/revoke", data={"token": token}, auth=RS_AUTH)
        revoke_done = time.monotonic()  # no earlier than the revocation's commit
        assert revoked.status_code == 200
        poller.join(LONG_POLL_SECONDS + 30)
        assert not poller.is_alive()
        response = answered["response"]
        assert response.status_code == 200, response.text
        sets = response.json()["sets"]
        assert len(sets) == 1
        assert token_hash(token) in json.dumps(set_payload(next(iter(sets.values()))))
        runs.append({"revoked": revoke_done - poll_sent, "answered": answered["at"] - poll_sent})
        if runs[-1]["answered"] < RECHECK_SECONDS:
            return  # answered before its first recheck: it was woken
        if runs[-1]["revoked"] + WATCH_SECONDS < RECHECK_SECONDS:
            break  # the revocation came back in time, and the poll still waited for its recheck
    pytest.fail(
        f"not answered before the poll's recheck ({RECHECK_SECONDS} s from sending it) in a run"
        f" whose revocation came back in time (seconds from sending the poll): {runs}"
    )


def test_the_watcher_reads_only_while_a_poll_waits(tmp_path):
    """In-process, on a real file: no data_version read while nobody waits; while a poll
    waits, a commit by another connection rings the doorbell (and nothing else does once the
    version is known); a commit made while nobody waited rings as soon as a poll waits again;
    with no poll waiting the watcher stops."""
    path = tmp_path / "events.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (x)")

    async def scenario() -> None:
        doorbell = Doorbell()
        wakeups = EventWakeups(f"sqlite:///{path}", doorbell)
        watch = wakeups.sqlite_watch
        assert watch is not None

        async def stopped() -> None:
            await until(lambda: not watch.watching)
            checks = watch.checks
            await asyncio.sleep(3 * WATCH_SECONDS)
            assert watch.checks == checks and not watch.watching  # nobody waits: no reads

        async def wait() -> tuple[int, asyncio.Task]:
            generation = doorbell.generation
            return generation, asyncio.create_task(doorbell.wait(generation, LONG_POLL_SECONDS))

        async with wakeups.running():
            await asyncio.sleep(3 * WATCH_SECONDS)
            assert watch.checks == 0 and not watch.watching
            generation, first = await wait()  # the version is unknown: the first read rings
            await first
            assert doorbell.generation != generation
            await stopped()

            checks = watch.checks
            generation, second = await wait()
            await until(lambda: watch.checks >= checks + 2)  # reading, the version unchanged
            assert doorbell.generation == generation and not second.done()
            other.execute("INSERT INTO t VALUES (1)")  # another connection commits
            await second
            assert doorbell.generation != generation  # rung, not timed out
            await stopped()

            other.execute("INSERT INTO t VALUES (2)")  # while nobody waits
            generation, third = await wait()
            await third
            assert doorbell.generation != generation
            await stopped()
        assert not watch.watching

    asyncio.run(scenario())
    other.close()


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + LONG_POLL_SECONDS
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
