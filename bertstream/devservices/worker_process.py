"""Run `bertstream worker` as a child process and wait until it is ready (demo, bench, tests)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bertstream.devservices.process import log_tail


class WorkerStartError(RuntimeError):
    pass


def start_worker_process(env: dict[str, str], pipelines: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "worker"]
    for name in pipelines:
        args += ["--pipeline", name]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def readyz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(json.load(resp).get("ready"))
    except (OSError, ValueError):
        return False


def wait_ready(
    proc: subprocess.Popen[bytes],
    port: int,
    log_path: Path,
    timeout_s: float = 300,
    tick: Callable[[], None] = lambda: None,
) -> None:
    """Until /readyz says ready; WorkerStartError with the log tail if the worker dies or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise WorkerStartError(f"worker exited with code {proc.returncode}:\n{log_tail(log_path)}")
        if readyz(port):
            return
        tick()
        time.sleep(0.5)
    raise WorkerStartError(f"worker not ready within {timeout_s:.0f}s:\n{log_tail(log_path)}")
