"""The shape of the code, checked: one folder per component, imports that respect it, small modules.

- `mcp_oauth/provider/`, `mcp_oauth/resource_server/` and `mcp_oauth/client/` each import only
  themselves and `mcp_oauth/common/`; `common/` imports no component.
- Each top-level script imports only its own component and `common/`.
- No module of the project (tests and benchmarks aside) is over 400 lines.

Imports are read from the syntax tree, so a local import inside a function counts as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mcp_oauth"
COMPONENTS = ("provider", "resource_server", "client")
SCRIPTS = {
    "oauth_provider.py": "provider",
    "mcp_resource_server.py": "resource_server",
    "client.py": "client",
}
MAX_LINES = 400


def project_modules() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / name for name in SCRIPTS)])


def imported_modules(path: Path) -> set[str]:
    """Every absolute `mcp_oauth…` module a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "mcp_oauth"}


def component_of(module: str) -> str | None:
    """`provider`, `resource_server`, `client` or `common` for a module inside one, else None."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in (*COMPONENTS, "common"):
        return parts[1]
    return None


def owner_of(path: Path) -> str | None:
    if path.parent == ROOT:
        return SCRIPTS[path.name]
    return component_of(".".join(path.relative_to(ROOT).with_suffix("").parts))


def forbidden_imports(path: Path) -> list[str]:
    owner = owner_of(path)
    allowed = {"common"} if owner == "common" else {owner, "common"}
    return sorted(
        module
        for module in imported_modules(path)
        if component_of(module) is not None and component_of(module) not in allowed
    )


@pytest.mark.parametrize("path", project_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_its_component_and_common(path: Path):
    assert forbidden_imports(path) == [], f"{path.relative_to(ROOT)} reaches into another component"


@pytest.mark.parametrize("path", project_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_400_lines(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by concern"


def test_every_module_lives_in_a_component_folder():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], "mcp_oauth/ holds only component folders: provider, resource_server, …"


def test_the_rule_catches_what_it_forbids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The checker itself: a client module importing the provider's storage is reported, and
    one importing common/ or itself is not (whether written absolute or relative)."""
    client = tmp_path / "mcp_oauth" / "client"
    client.mkdir(parents=True)
    bad = client / "bad.py"
    bad.write_text(
        "from mcp_oauth.provider.storage import Store\n"
        "def f():\n    from ..resource_server import gate\n"
    )
    good = client / "good.py"
    good.write_text("from mcp_oauth.common.text import printable\nfrom . import errors\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert forbidden_imports(bad) == [
        "mcp_oauth.provider.storage",
        "mcp_oauth.provider.storage.Store",
        "mcp_oauth.resource_server",
        "mcp_oauth.resource_server.gate",
    ]
    assert forbidden_imports(good) == []
