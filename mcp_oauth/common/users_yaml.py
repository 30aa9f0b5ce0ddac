"""Reading users.yaml: the provider loads accounts, clients and resources from it, and the
client's demo reads what each account may receive, to check what the provider grants."""

from pathlib import Path
from typing import Any

import yaml


class UsersFileError(ValueError):
    """users.yaml is missing or malformed; the message names the file and the fix."""


def read_users_yaml(path: Path) -> dict[str, Any]:
    """The parsed file; a missing, unreadable or invalid one raises UsersFileError."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsersFileError(f"cannot read users file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsersFileError(f"users file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("users"), dict):
        raise UsersFileError(f"users file {path} has no 'users:' section")
    return raw


def account_scopes(raw: dict[str, Any]) -> dict[str, frozenset[str]]:
    """Each account and the scopes it may receive (the provider grants requested ∩ these)."""
    return {name: frozenset(entry.get("scopes", [])) for name, entry in raw["users"].items()}
