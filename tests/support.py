"""Shared test helpers: free ports and real server processes.

Every integration test talks to real servers over real HTTP. These helpers start
a script of this repository as a subprocess on a free port and wait until it answers.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def pinned_npm_version(folder: Path, package: str) -> str:
    return json.loads((folder / "package.json").read_text())["dependencies"][package]


def installed_npm_version(folder: Path, package: str) -> str | None:
    installed = folder / "node_modules" / package / "package.json"
    return json.loads(installed.read_text())["version"] if installed.exists() else None


def install_pinned_npm_package(folder: Path, package: str) -> None:
    """`npm ci` in `folder` from its committed lockfile, unless the version its package.json
    pins is already installed (node_modules is gitignored). Safe across concurrent test
    processes: one install at a time, under a file lock. The caller checks npm is on PATH."""
    npm = shutil.which("npm")
    assert npm, "npm is not on PATH"
    lock = Path(tempfile.gettempdir()) / f"mcp-oauth-npm-{folder.name}.lock"
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if installed_npm_version(folder, package) == pinned_npm_version(folder, package):
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
        )
        installed = installed_npm_version(folder, package)
        if result.returncode != 0 or installed != pinned_npm_version(folder, package):
            raise RuntimeError(f"`npm ci` in {folder} failed:\n{result.stdout}{result.stderr}")


CHROMIUM = Path("/usr/bin/chromium")  # Debian's: Playwright's own browser download fails here


@contextmanager
def headless_chromium() -> Iterator:
    """A Playwright Browser on Debian's Chromium, headless, closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A repository script running as a subprocess, stopped and restarted at will."""

    def __init__(self, args: list[str], env: Mapping[str, str], ready_url: str, log: Path):
        self.args = args
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.ready_url = ready_url
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.args], cwd=ROOT, env=self.env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited early:\n{self.log.read_text()}")
            try:
                httpx.get(self.ready_url, timeout=1.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.args[0]} did not answer at {self.ready_url}:\n{self.log.read_text()}"
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")
