"""External peers for interop tests and benchmarks.

`oidc_provider/` runs panva's node oidc-provider (a real, independent authorization server, our
stand-in for Keycloak); `entra.py` imitates Microsoft Entra ID, which cannot run here. Start them
through `tests/peer_fixtures.py`.
"""
