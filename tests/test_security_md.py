"""SECURITY.md names, beside each promise, the tests that check it: every name must exist.

A reference is `file::test` (file in tests/, without .py) or `::test` for the file named last
in the same row; a `[param]` suffix names one parametrized case and `::*` the whole file.
"""

from __future__ import annotations

import ast
import re
import tomllib
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


Test = tuple[str, str, str | None]
"""(module, function, parametrized case or None for all of them); function `*`: the file."""


def promise_rows() -> list[tuple[str, set[Test]]]:
    """Each row of SECURITY.md's promise tables: its first words and the tests it names."""
    rows = []
    for row in (ROOT / "SECURITY.md").read_text().splitlines():
        if not row.startswith("| ") or row.startswith("| promise"):
            continue
        module = function = None
        named: set[Test] = set()
        for match in REFERENCE.finditer(row):
            if match.group(2) is not None:
                module, function = match.group(1) or module, match.group(2)
                case = match.group(3)
            else:  # a bare `[param]`: another case of the function named last
                case = match.group(0).strip("`")
            named.add((module, function, case[1:-1] if case else None))
        rows.append((row[2:70], named))
    return rows


def mutation_tests() -> dict[str, set[Test]]:
    """scripts/mutations.toml: each mutation's paired tests."""
    table = tomllib.loads((ROOT / "scripts" / "mutations.toml").read_text())["mutation"]
    pairs = {}
    for row in table:
        tests = set()
        for node in row["tests"]:
            file, _, function = node.partition("::")
            function, _, case = function.partition("[")
            tests.add((file.removesuffix(".py"), function, case[:-1] or None))
        pairs[row["name"]] = tests
    return pairs


def cited(test: Test, named: set[Test]) -> bool:
    module, function, _ = test
    return test in named or (module, function, None) in named or (module, "*", None) in named


def uncovered_promises(mutations: dict[str, set[Test]]) -> list[str]:
    return [
        words
        for words, named in promise_rows()
        if not any(all(cited(test, named) for test in tests) for tests in mutations.values())
    ]


def test_every_promise_has_a_mutation_that_its_own_tests_must_kill():
    """The mutation check covers SECURITY.md row by row: for every promise, at least one
    mutation of scripts/mutations.toml is paired only with tests that row names, so
    switching that protection off must fail the very tests cited for it."""
    assert len(promise_rows()) > 30
    assert uncovered_promises(mutation_tests()) == []
