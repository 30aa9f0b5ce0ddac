"""How this server is told to check bearer tokens: MCP_TOKEN_VALIDATION and its companions,
read by `ValidationSettings.from_env` and described in SETTINGS_HELP (the --help epilog)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast, get_args

Mode = Literal["auto", "introspection", "jwt"]

SETTINGS_HELP = """\
  MCP_TOKEN_VALIDATION           auto (default) | introspection | jwt: how bearer tokens are
                                 checked; auto introspects when the provider offers it and
                                 MCP_RS_CLIENT_ID/SECRET are set, else validates JWTs locally
  MCP_JWKS_URL                   key set URL, instead of the provider's advertised jwks_uri
  MCP_JWT_LEEWAY                 seconds of clock skew allowed on exp/nbf/iat (default 60)
  MCP_JWKS_CACHE_TTL             seconds a fetched key set is reused (default 3600)
  MCP_JWKS_REFETCH_INTERVAL      least seconds between refetches caused by unknown kids
                                 (default 30)
  MCP_ENTRA_TENANT_ID            Entra tenant id: accept Entra v1/v2 tokens of this tenant
                                 (OAUTH_PROVIDER_URL then defaults to its v2.0 issuer)
  MCP_ENTRA_CLIENT_ID            client id of the MCP API's app registration (the v2 `aud`;
                                 also the default MCP_RS_CLIENT_ID)
  MCP_ENTRA_APP_ID_URI           its application ID URI (the v1 `aud`; default api://<client id>)
"""


class ConfigurationError(ValueError):
    """Settings or provider metadata that allow no way to check tokens; the message says the fix."""


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {env[name]!r}") from None


@dataclass(frozen=True)
class ValidationSettings:
    """How bearer tokens are checked (SETTINGS_HELP describes each environment variable)."""

    mode: Mode = "auto"
    jwks_url: str | None = None
    leeway: int = 60
    jwks_cache_ttl: float = 3600.0
    jwks_refetch_interval: float = 30.0
    entra_tenant_id: str | None = None
    entra_client_id: str | None = None
    entra_app_id_uri: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ValidationSettings:
        mode = env.get("MCP_TOKEN_VALIDATION", "auto").strip().lower()
        if mode not in get_args(Mode):
            raise ConfigurationError(
                f"MCP_TOKEN_VALIDATION must be auto, introspection or jwt, not {mode!r}"
            )
        tenant = env.get("MCP_ENTRA_TENANT_ID") or None
        client_id = env.get("MCP_ENTRA_CLIENT_ID") or None
        if tenant and not client_id:
            raise ConfigurationError(
                "MCP_ENTRA_TENANT_ID is set but MCP_ENTRA_CLIENT_ID is not: set it to the "
                "client id of the API's app registration"
            )
        if tenant and mode == "introspection":
            raise ConfigurationError(
                "Entra has no introspection endpoint: use MCP_TOKEN_VALIDATION=jwt or auto "
                "with MCP_ENTRA_TENANT_ID"
            )
        return cls(
            mode=cast(Mode, mode),
            jwks_url=env.get("MCP_JWKS_URL") or None,
            leeway=int(_number(env, "MCP_JWT_LEEWAY", 60)),
            jwks_cache_ttl=_number(env, "MCP_JWKS_CACHE_TTL", 3600),
            jwks_refetch_interval=_number(env, "MCP_JWKS_REFETCH_INTERVAL", 30),
            entra_tenant_id=tenant,
            entra_client_id=client_id,
            entra_app_id_uri=env.get("MCP_ENTRA_APP_ID_URI") or None,
        )

    @property
    def entra(self) -> bool:
        return self.entra_tenant_id is not None
