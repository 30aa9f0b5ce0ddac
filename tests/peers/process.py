"""A peer program (node oidc-provider, Glewlwyd) as a subprocess: started with its output in a
log file, waited for until a URL answers 200, and stopped (terminate, then kill)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import httpx


def start_peer(
    args: list[str],
    *,
    ready_url: str,
    log: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[subprocess.Popen[bytes], httpx.Response]:
    """The running process and the 200 answer of `ready_url`; RuntimeError (with the log) if
    it exits or does not answer within `timeout`."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=out
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[0]} exited early:\n{log.read_text(errors='replace')}")
        try:
            response = httpx.get(ready_url, timeout=1.0)
            if response.status_code == 200:
                return process, response
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_peer(process)
    raise RuntimeError(f"{args[0]} did not answer at {ready_url}:\n{log.read_text()}")


def stop_peer(process: subprocess.Popen[bytes]) -> None:
    """Terminate the process, and kill it if it does not exit within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
