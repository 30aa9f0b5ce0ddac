"""OAuth scope strings (RFC 6749 §3.3: space-delimited, order carries no meaning)."""


def scope_set(scope: str | None) -> set[str]:
    return set((scope or "").split())


def scope_str(scopes: set[str] | frozenset[str]) -> str:
    """Scopes in a stable order, so equal sets always print the same."""
    return " ".join(sorted(scopes))
