"""A provider that publishes no revocation events (node oidc-provider, standing in for
Keycloak and the others) leaves the resource server exactly as it was without them: no
stream, answers cached only the ordinary TTL, nothing refused by an event (issue 13)."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.peer_fixtures import OidcProviderPeer, start_resource_server
from tests.support import free_port

pytest_plugins = ["tests.peer_fixtures"]

DEADLINE = 30.0  # seconds for the receiver to look for the provider's ssf-configuration


def test_a_provider_without_events_gets_todays_cache_rules(
    oidc_provider_factory: Callable[..., OidcProviderPeer], tmp_path
):
    port = free_port()
    peer = oidc_provider_factory("opaque", f"http://127.0.0.1:{port}/mcp")
    env = {
        "OAUTH_PROVIDER_URL": peer.issuer,
        "MCP_RS_CLIENT_ID": "mcp-resource-server",
        "MCP_RS_CLIENT_SECRET": peer.rs_client_secret,
    }
    rs = start_resource_server(tmp_path, port, env)
    try:
        token = peer.client_credentials_token("read write", resource=rs.url)
        assert rs.post(token, "get_user_profile").status_code == 200
        until = time.monotonic() + DEADLINE
        while (events := rs.metrics()["revocation_events"])["state"] != (
            "not offered by the provider"
        ):
            assert time.monotonic() < until, events
            time.sleep(0.1)
        assert rs.post(token, "get_user_profile").status_code == 200
        verifier = rs.metrics()["token_verifier"]
        assert verifier["mode"] == "introspection"
        assert verifier["kept_answer_ttl"] == 0 and verifier["kept_answers"] == 0
        assert verifier["cache_entries"] == 1  # the ordinary cache (60 s), as before
        assert events["streams_created"] == 0 and events["events_applied"] == 0
    finally:
        rs.process.stop()
