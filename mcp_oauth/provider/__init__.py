"""The authorization server behind oauth_provider.py: Authlib bound to Starlette, the grants
it registers, storage, token minting, the pages a person sees and the protocol checks."""
