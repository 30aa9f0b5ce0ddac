"""Shared test helpers: free ports and real server processes.

Every integration test talks to real servers over real HTTP. These helpers start
a script of this repository as a subprocess on a free port and wait until it answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


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
