"""Serving the provider's app with uvicorn: one process, or `--workers N` processes sharing the
port and the database (the scale-up before replicas).

Several workers are what replicas are, on one machine: every piece of state a request depends
on is in the database (clients, codes, tokens, sessions and their key, the signing key, the
sign-in throttle, the registration limit, revocation events), so a request may reach any
worker. What each worker keeps for itself is bounded and only a cache: the client cache
(CLIENT_CACHE_SECONDS) and client metadata documents (their HTTP cache lifetime). Event polls
are woken at once whichever worker revoked (event_wakeups.py: NOTIFY on PostgreSQL, the file's
data_version on SQLite).

uvicorn starts workers as new processes that import the app by name: the parent puts the
settings' command line and the name of the app builder in the environment, and each worker
builds its app from them in `worker_app`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
from collections.abc import Callable

import uvicorn

from mcp_oauth.provider.coalesced_writes import CoalescingHttpToolsProtocol
from mcp_oauth.provider.passwords import REPORT_LOGGER, use_parameters
from mcp_oauth.provider.settings import parse_settings

ARGV_VARIABLE = "OAUTH_WORKER_ARGV"
BUILDER_VARIABLE = "OAUTH_WORKER_APP_BUILDER"


def prepare_process(settings: argparse.Namespace) -> None:
    """What every serving process sets up before building the app: logging, and the argon2
    parameters of new hashes and of the unknown-user dummy hash."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    use_parameters(settings.argon2)


def uvicorn_options(settings: argparse.Namespace) -> dict:
    """The same uvicorn settings for one process or many."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": 2,  # open event polls end rather than hold a stop up
        "http": CoalescingHttpToolsProtocol,  # a response's head and body in one write
    }


def serve(settings: argparse.Namespace, app, builder: str, argv: list[str]) -> None:
    """Run `app` in this process, or `settings.workers` workers each building its own with
    `builder` ("module:function", called with the settings parsed from `argv`). The parent
    built `app` first: the database is created and the users file checked once, before any
    worker starts."""
    if settings.workers <= 1:
        uvicorn.run(app, **uvicorn_options(settings))
        return
    del app  # the workers build their own; this one only supervises
    os.environ[ARGV_VARIABLE] = json.dumps(argv)
    os.environ[BUILDER_VARIABLE] = builder
    uvicorn.run(
        f"{__name__}:worker_app",
        factory=True,
        workers=settings.workers,
        **uvicorn_options(settings),
    )


def worker_app():
    """uvicorn's factory in each worker: the settings and the app as the parent had them."""
    settings = parse_settings(json.loads(os.environ[ARGV_VARIABLE]))
    prepare_process(settings)
    logging.getLogger(REPORT_LOGGER).setLevel(logging.ERROR)  # the parent reported them once
    module, _, name = os.environ[BUILDER_VARIABLE].partition(":")
    build: Callable = getattr(importlib.import_module(module), name)
    return build(settings)
