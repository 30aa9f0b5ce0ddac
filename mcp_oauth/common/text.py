"""Untrusted text made safe to echo where the protocol restricts characters."""


def printable(value: object, limit: int = 100) -> str:
    """A value safe to echo in an error_description (RFC 6749 §5.2) or a WWW-Authenticate
    attribute (RFC 6750 §3): printable ASCII without `"` and `\\`, at most `limit` characters;
    anything else becomes `?`."""
    text = str(value)[:limit]
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)
