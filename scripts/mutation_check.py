#!/usr/bin/env python3
"""Mutation check: each SECURITY.md promise, switched off one line at a time, must fail its tests.

    .venv/bin/python scripts/mutation_check.py            # every mutation, one at a time
    .venv/bin/python scripts/mutation_check.py --list     # the table
    .venv/bin/python scripts/mutation_check.py --only pkce-removed rs-iss-check-off -j 2

First the baseline: every paired test must pass on an unmutated copy (otherwise a "kill"
means nothing). Then, for each mutation of scripts/mutations.toml: copy the repository's files
(tracked, and untracked ones git does not ignore) to a temporary folder, replace the original
snippet (it must occur exactly once, else the mutation is STALE: the code moved and the table
must follow) and run only the paired tests there. A mutation is KILLED when those tests fail,
SURVIVED when they pass. Exit status 0 only when every mutation selected is killed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    replacement: str
    promise: str
    """The promise it breaks, as SECURITY.md words it."""
    tests: tuple[str, ...]
    """Node ids under tests/ that must fail."""


TABLE = ROOT / "scripts" / "mutations.toml"


def load_mutations(table: Path = TABLE) -> list[Mutation]:
    """The table: one `[[mutation]]` per protection, with the tests that must kill it."""
    rows = tomllib.loads(table.read_text())["mutation"]
    return [Mutation(**{**row, "tests": tuple(row["tests"])}) for row in rows]


MUTATIONS = load_mutations()


def repository_files(source: Path) -> list[str]:
    """Tracked files and untracked ones git does not ignore, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (source / name).is_file()]


def copy_repository(source: Path, target: Path) -> None:
    names = repository_files(source)
    for name in names:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, destination)
    # npm packages (ignored by git) are shared, not copied: a node_modules beside each tracked
    # package.json (the conformance suite, the peers, the MCP clients), where installed.
    for name in names:
        if Path(name).name == "package.json":
            modules = Path(name).parent / "node_modules"
            if (source / modules).is_dir() and not (target / modules).exists():
                (target / modules).symlink_to(source / modules, target_is_directory=True)


def apply(mutation: Mutation, root: Path) -> str | None:
    """Apply the mutation in `root`; None, or why it is stale."""
    path = root / mutation.file
    if not path.is_file():
        return f"{mutation.file} does not exist"
    text = path.read_text()
    count = text.count(mutation.original)
    if count != 1:
        return f"its original snippet occurs {count} times in {mutation.file} (must be once)"
    path.write_text(text.replace(mutation.original, mutation.replacement))
    return None


def pytest_in(
    root: Path, python: str, nodes: list[str]
) -> tuple[subprocess.CompletedProcess, float]:
    """Run these tests in `root` (stop at the first failure); the result and its seconds."""
    started = time.monotonic()
    command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    command += [f"tests/{node}" for node in nodes]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
    return done, time.monotonic() - started


def run(mutation: Mutation, source: Path, python: str, verbose: bool) -> tuple[str, str]:
    """(outcome, detail) for one mutation: KILLED, SURVIVED, STALE or ERROR."""
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as tmp:
        root = Path(tmp)
        copy_repository(source, root)
        stale = apply(mutation, root)
        if stale:
            return "STALE", stale
        done, seconds = pytest_in(root, python, list(mutation.tests))
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        if verbose:
            print(f"--- {mutation.name}\n{tail}", flush=True)
        if done.returncode == 1:
            failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
            return "KILLED", f"{seconds:.0f} s; {failed[0] if failed else 'tests failed'}"
        if done.returncode == 0:
            return "SURVIVED", f"{seconds:.0f} s; the paired tests passed"
        return "ERROR", f"pytest exit {done.returncode} ({seconds:.0f} s):\n{tail}"


def check_baseline(source: Path, python: str, mutations: list[Mutation]) -> None:
    """The copy, not an installed checkout, must be what the tests import, and every paired
    test must pass there unmutated."""
    with tempfile.TemporaryDirectory(prefix="mutation-baseline-") as tmp:
        copy_repository(source, Path(tmp))
        found = subprocess.run(
            [python, "-c", "import mcp_oauth; print(mcp_oauth.__file__)"],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not Path(found).resolve().is_relative_to(Path(tmp).resolve()):
            sys.exit(f"mutation_check: the copy imports mcp_oauth from {found}, not from itself")
        nodes = list(dict.fromkeys(node for m in mutations for node in m.tests))
        done, seconds = pytest_in(Path(tmp), python, nodes)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            sys.exit(f"mutation_check: the paired tests fail without any mutation:\n{tail}")
        print(f"baseline: {len(nodes)} paired tests pass unmutated ({seconds:.0f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutations at once (default 1)")
    parser.add_argument("--source", type=Path, default=ROOT, help="repository to copy")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter with the test dependencies"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip running the paired tests unmutated first"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show each pytest tail")
    args = parser.parse_args()

    names = {m.name for m in MUTATIONS}
    assert len(names) == len(MUTATIONS), "mutation names must be unique"
    if args.only:
        unknown = set(args.only) - names
        if unknown:
            parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
    selected = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in selected:
            print(f"{m.name}\n  {m.file}: {m.promise}\n  killed by: {', '.join(m.tests)}")
        return 0

    if not args.no_baseline:
        check_baseline(args.source, args.python, selected)
    outcomes: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            m.name: pool.submit(run, m, args.source, args.python, args.verbose) for m in selected
        }
        for m in selected:
            outcome, detail = futures[m.name].result()
            outcomes.setdefault(outcome, []).append(m.name)
            print(f"{outcome:8} {m.name}: {detail}", flush=True)
    summary = ", ".join(f"{len(v)} {k.lower()}" for k, v in sorted(outcomes.items()))
    print(f"\n{len(selected)} mutations: {summary}")
    for bad in ("SURVIVED", "STALE", "ERROR"):
        if outcomes.get(bad):
            print(f"{bad.lower()}: {', '.join(outcomes[bad])}")
    return 0 if set(outcomes) <= {"KILLED"} else 1


if __name__ == "__main__":
    sys.exit(main())
