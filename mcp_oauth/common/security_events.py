"""The words the provider (transmitter) and the resource server (receiver) share about
revocation events: Security Event Tokens (RFC 8417) in the shapes of the OpenID Shared Signals
Framework 1.0, delivered by RFC 8936 polling.

Every event names the tokens it ends by the SHA-256 (hex) of the token string, the hash the
provider already stores, never the token itself (`TOKEN_HASHES`); and, in its RFC 9493 subject
identifier, the user (`iss_sub`) and, for a token family, the family as the session.
"""

from __future__ import annotations

SSF_CONFIGURATION_PATH = "/.well-known/ssf-configuration"  # SSF 1.0 §7.1
POLL_DELIVERY = "urn:ietf:rfc:8936"  # SSF 1.0 §6.1.2: poll-based delivery
SET_TYPE = "secevent+jwt"  # RFC 8417 §2.3 `typ`

# A token family (every token of one sign-in, refresh chain or exchange) ended: CAEP 1.0 §3.1.
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
# Every family of one user ended (the admin API's revoke-user): RISC 1.0 §2.6.
SESSIONS_REVOKED = "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked"
# Single access tokens ended while their family lives (RFC 7009 revocation of an access token,
# with the tokens exchanged for it). No SSF event has this meaning; the URN is this project's.
TOKENS_REVOKED = "urn:mcp-oauth:secevent:event-type:tokens-revoked"
EVENT_TYPES = (SESSION_REVOKED, SESSIONS_REVOKED, TOKENS_REVOKED)

TOKEN_HASHES = "token_sha256"  # event member: hex SHA-256 of each access token it ends
TOKENS_EXPIRE_AT = "tokens_expire_at"  # event member: the latest `exp` among them
