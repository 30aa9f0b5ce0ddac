"""The resource server's settings, from its environment (ENVIRONMENT_HELP describes each)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mcp_oauth.resource_server.entra import entra_issuers
from mcp_oauth.resource_server.validation_settings import (
    SETTINGS_HELP,
    ConfigurationError,
    ValidationSettings,
)

CACHE_TTL_WITH_EVENTS = 300.0  # revocations arrive within a second: the TTL bounds only load
CACHE_TTL_WITHOUT_EVENTS = 60.0  # the TTL is the revocation window: keep it short

DEV_CLIENT_SECRET = "dev-mcp-resource-server-secret"  # the provider's development default

ENVIRONMENT_HELP = f"""\
environment:
  OAUTH_PROVIDER_URL             issuer URL of the authorization server, exactly as it states
                                 it; its endpoints are discovered from its metadata
                                 (default http://localhost:9000)
  OAUTH_METADATA_URL             URL of its metadata document, when not at the issuer's
                                 well-known URLs (RFC 8414, then OpenID discovery); the issuer
                                 it names must still be OAUTH_PROVIDER_URL
  MCP_SERVER_URL                 public URL of the MCP endpoint: the resource tokens must name
                                 in `aud`, and its path is where MCP is served
                                 (default http://localhost:8000/mcp)
  MCP_RS_CLIENT_ID               this server's client id at the provider, used to introspect
                                 tokens, exchange them and call the admin API
                                 (default mcp-resource-server)
  MCP_RS_CLIENT_SECRET           its secret; with Entra, a client secret of the MCP API's app
                                 registration (for On-Behalf-Of). When OAUTH_PROVIDER_URL is
                                 not set: the local provider's development default
                                 {DEV_CLIENT_SECRET!r}, with a warning
  MCP_DOWNSTREAM_URL             the API get_downstream_profile calls on the user's behalf
                                 (default: the provider's <issuer>/api/profile; needed with Entra)
  MCP_DOWNSTREAM_RESOURCE        the audience to exchange the user's token for: a resource URI
                                 or a logical name such as a Keycloak client id; with Entra the
                                 downstream API's app ID URI (default MCP_DOWNSTREAM_URL)
  MCP_INTROSPECTION_CACHE_TTL    seconds a token's positive introspection answer is reused,
                                 never beyond the token's expiry (default: 300 while the
                                 provider's revocation event stream is healthy, 60 otherwise):
                                 longer means fewer provider calls; without the stream a revoked
                                 token keeps working that long
  MCP_REVOCATION_EVENTS          on (default) | off: receive the provider's revocation events
                                 (Shared Signals, its /.well-known/ssf-configuration) so a
                                 revoked token is refused within a second, in either mode
  MCP_INTROSPECTION_REFUSAL_TTL  seconds a refused token stays refused without asking again
                                 (default 5)
  MCP_INTROSPECTION_CACHE_SIZE   most accepted tokens cached, and as many refusals (default 10000)
  MCP_DATABASE_URL               SQLAlchemy URL of this server's own records and notes
                                 (default sqlite:///data/mcp_resource_server.db)
{SETTINGS_HELP}"""


@dataclass(frozen=True)
class Settings:
    provider_url: str
    metadata_url: str | None
    server_url: str
    client_id: str
    client_secret: str
    cache_ttl: float | None  # None: CACHE_TTL_WITH_EVENTS or CACHE_TTL_WITHOUT_EVENTS
    revocation_events: bool
    refusal_ttl: float
    cache_size: int
    database_url: str
    downstream_url: str | None
    downstream_resource: str | None
    validation: ValidationSettings

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        try:
            validation = ValidationSettings.from_env()
        except ConfigurationError as exc:
            raise SystemExit(f"mcp_resource_server: {exc}") from None
        # Defaults follow the provider: our local one, or the Entra tenant's v2.0 issuer.
        # The development secret belongs to the local development provider only.
        provider_url, client_id = "http://localhost:9000", "mcp-resource-server"
        secret = "" if "OAUTH_PROVIDER_URL" in os.environ else DEV_CLIENT_SECRET
        if validation.entra_tenant_id and validation.entra_client_id:
            provider_url = entra_issuers(validation.entra_tenant_id)[1]
            client_id, secret = validation.entra_client_id, ""
        try:
            return cls(
                provider_url=env("OAUTH_PROVIDER_URL", provider_url),
                metadata_url=env("OAUTH_METADATA_URL") or None,
                server_url=env("MCP_SERVER_URL", "http://localhost:8000/mcp"),
                client_id=env("MCP_RS_CLIENT_ID", client_id),
                client_secret=env("MCP_RS_CLIENT_SECRET", secret),
                cache_ttl=float(env("MCP_INTROSPECTION_CACHE_TTL", ""))
                if env("MCP_INTROSPECTION_CACHE_TTL")
                else None,
                revocation_events=env("MCP_REVOCATION_EVENTS", "on").strip().lower() != "off",
                refusal_ttl=float(env("MCP_INTROSPECTION_REFUSAL_TTL", "5")),
                cache_size=int(env("MCP_INTROSPECTION_CACHE_SIZE", "10000")),
                database_url=env("MCP_DATABASE_URL", "sqlite:///data/mcp_resource_server.db"),
                downstream_url=env("MCP_DOWNSTREAM_URL") or None,
                downstream_resource=env("MCP_DOWNSTREAM_RESOURCE") or None,
                validation=validation,
            )
        except ValueError as exc:
            raise SystemExit(f"mcp_resource_server: bad numeric setting: {exc}") from None

    @property
    def cache_ttl_with_events(self) -> float:
        """How long accepted answers are kept while revocations arrive as events (0: no
        longer than without them, when MCP_INTROSPECTION_CACHE_TTL sets one TTL for both)."""
        return CACHE_TTL_WITH_EVENTS if self.cache_ttl is None else 0.0

    @property
    def cache_ttl_without_events(self) -> float:
        """The TTL otherwise: a revoked token may keep working this long."""
        return CACHE_TTL_WITHOUT_EVENTS if self.cache_ttl is None else self.cache_ttl

    @property
    def receives_revocation_events(self) -> bool:
        """Events need this server's credentials at the provider; Entra sends none."""
        credentials = bool(self.client_id and self.client_secret)
        return self.revocation_events and credentials and not self.validation.entra
