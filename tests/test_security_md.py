"""SECURITY.md names, beside each promise, the tests that check it: every name must exist.

A reference is `file::test` (file in tests/, without .py) or `::test` for the file named last
in the same row; a `[param]` suffix names one parametrized case and `::*` the whole file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"`(test_\w+)?::(\w+|\*)(\[[^`]*\])?`|`\[[^`]*\]`")


def functions_in(module: str) -> set[str]:
    tree = ast.parse((ROOT / "tests" / f"{module}.py").read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def references() -> list[tuple[str, str]]:
    found = []
    for row in (ROOT / "SECURITY.md").read_text().splitlines():
        module = None
        for match in REFERENCE.finditer(row):
            if match.group(2) is None:
                continue  # a bare `[param]` continues the previous reference
            module = match.group(1) or module
            assert module, f"a reference without its file: {match.group(0)} in {row[:60]}…"
            found.append((module, match.group(2)))
    return found


def test_security_md_names_only_tests_that_exist():
    refs = references()
    assert len(refs) > 100
    missing = [
        f"{module}::{name}"
        for module, name in refs
        if not (ROOT / "tests" / f"{module}.py").exists()
        or (name != "*" and name not in functions_in(module))
    ]
    assert missing == []
