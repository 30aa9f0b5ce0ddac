"""The token cache: one JSON file per MCP server and account, readable only by its owner.

`$XDG_CACHE_HOME/mcp-oauth/<server>/<account>.json` (default `~/.cache/...`), directories
0700 and files 0600, written atomically. A file holds everything needed to carry on without
asking the user again: where the authorization server is (its metadata), which client
identity was used, the tokens and when to refresh them, and the scopes asked for — so a
step-up never asks twice for a scope the provider already refused.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import BaseModel, ValidationError

from mcp_oauth.client.discovery import ServerMetadata
from mcp_oauth.client.errors import ClientError

DEFAULT_ACCOUNT = "default"
# Refresh this long before the access token expires (capped at a tenth of its lifetime).
REFRESH_AHEAD_SECONDS = 60


class SavedLogin(BaseModel):
    """What one sign-in leaves behind for the next run."""

    resource: str
    metadata: ServerMetadata
    client: OAuthClientInformationFull
    tokens: OAuthToken | None = None
    expires_at: float | None = None
    refresh_at: float | None = None
    requested_scope: str | None = None

    def store_tokens(self, tokens: OAuthToken, requested_scope: str | None = None) -> None:
        """Keep a token response; a refresh that omits scope or refresh_token keeps the old ones
        (RFC 6749 §5.1, §6)."""
        if self.tokens is not None:
            tokens.scope = tokens.scope or self.tokens.scope
            tokens.refresh_token = tokens.refresh_token or self.tokens.refresh_token
        tokens.scope = tokens.scope or requested_scope
        self.tokens = tokens
        if requested_scope is not None:
            self.requested_scope = requested_scope
        now = time.time()
        if tokens.expires_in is None:
            self.expires_at = self.refresh_at = None
        else:
            self.expires_at = now + tokens.expires_in
            ahead = min(REFRESH_AHEAD_SECONDS, tokens.expires_in / 10)
            self.refresh_at = self.expires_at - ahead

    @property
    def issued_scope(self) -> str:
        """The scope of the token held (RFC 6749 §5.1: as issued, else as requested)."""
        return (self.tokens.scope if self.tokens else None) or ""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mcp-oauth"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.@-]+", "_", text).strip("_") or "_"


class TokenCache:
    """The cache file of one (MCP server, account) pair."""

    def __init__(self, server_url: str, account: str | None):
        parts = urlsplit(server_url)
        self.path = (
            cache_root()
            / slug(parts.netloc + parts.path)
            / f"{slug(account or DEFAULT_ACCOUNT)}.json"
        )

    def load(self) -> SavedLogin | None:
        try:
            return SavedLogin.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            raise ClientError(
                f"the token cache {self.path} is unreadable ({type(exc).__name__})",
                "delete that file and sign in again",
            ) from exc

    def save(self, login: SavedLogin) -> None:
        for directory in (cache_root(), self.path.parent):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(login.model_dump_json(indent=2, exclude_none=True))
        os.replace(temporary, self.path)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
