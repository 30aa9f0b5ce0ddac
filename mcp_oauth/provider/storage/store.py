"""Durable storage for the authorization server (SQLAlchemy 2 Core), one store per concern.

SQLite (WAL) is the embedded default; the same statements run on PostgreSQL so several
provider replicas can share one database. Every secret the provider hands out is stored only
as its hash (hashed_secrets.py). Single use and rotation are decided by the database, not by
the Python process: see codes.py, tokens.py and devices.py.
"""

from __future__ import annotations

from collections.abc import Callable

from mcp_oauth.provider.storage.clients import ClientStore
from mcp_oauth.provider.storage.codes import CodeStore
from mcp_oauth.provider.storage.database import Database
from mcp_oauth.provider.storage.devices import DeviceStore
from mcp_oauth.provider.storage.login_throttle import LoginThrottle
from mcp_oauth.provider.storage.rate_limits import RateLimits
from mcp_oauth.provider.storage.security_events import SecurityEvents
from mcp_oauth.provider.storage.sessions import SessionStore
from mcp_oauth.provider.storage.tokens import TokenStore


class Store:
    """Every read and write the authorization server makes, each in its own transaction."""

    def __init__(self, url: str):
        self.db = Database(url)
        self.engine = self.db.engine
        self.clients = ClientStore(self.db)
        self.events = SecurityEvents(self.db)
        self.tokens = TokenStore(self.db, self.events)
        self.codes = CodeStore(self.db, self.tokens)
        self.devices = DeviceStore(self.db)
        self.login_throttle = LoginThrottle(self.db)
        self.rate_limits = RateLimits(self.db)
        self.sessions = SessionStore(self.db)

    def server_secret(self, name: str, create: Callable[[], str]) -> str:
        """The named secret (a signing key, the session key), the same for every replica."""
        return self.db.server_secret(name, create)
