"""The authorization server behind oauth_provider.py, which wires these together:

- authorization_server.py: Authlib bound to Starlette; oauth_request.py reads requests for it
- grants.py (grant types) and endpoints.py (introspection, revocation, registration, device
  authorization): small Authlib subclasses; metadata.py derives RFC 8414 metadata from them
- checks.py and client_checks.py: one protocol check per function, with its RFC
- token_minter.py: tokens and their claims; hashed_secrets.py: random secrets and their hash
- storage/: the schema and one store per concern; records.py: the rows Authlib works with
- pages.py, sign_in.py, authorize_page.py, device_page.py, consent.py: what a person sees
- identity.py: OpenID Connect (identity scopes, their claims, ID tokens via Authlib)
- userinfo.py (OIDC UserInfo and the On-Behalf-Of profile API) and admin_api.py: the
  provider's own APIs; users_file.py: users.yaml; settings.py: the flags and their env vars
"""
