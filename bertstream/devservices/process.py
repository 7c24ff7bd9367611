"""Helpers for the embedded services (tansu broker, redis-server) used by the demo and tests.

Shared here: free-port picking, waiting for a TCP port, stopping a process group, and
``EmbeddedProcess`` -- the start/stop/restart/context-manager shape that ``EmbeddedBroker`` and
``EmbeddedRedis`` both fill in with a command line and a readiness probe.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until ``host:port`` accepts connections; raise RuntimeError on timeout or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before {host}:{port} opened")
        if port_open(host, port):
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{host}:{port} did not accept connections within {timeout:.0f}s")
        time.sleep(0.05)


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL it after ``timeout``; always reap ``proc``.

    ``proc`` must have been started with ``start_new_session=True`` so that its pid is its group id.
    """
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    # Kill stragglers in the group even when the leader already exited, then reap the leader.
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' if it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class EmbeddedProcess:
    """A child server process in its own process group, logging to a file in a private temp dir.

    Subclasses set ``name`` and implement ``_command()`` and ``_probe()`` (True once the service
    answers its own protocol). The port stays fixed across ``restart()``.
    """

    name = "service"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None

    # -- to implement -----------------------------------------------------------------------
    def _command(self) -> Sequence[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def tmpdir(self) -> Path:
        """Private working directory (created on first use, removed by ``stop()``)."""
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix=f"bertstream-{self.name}-"))
        return self._tmpdir

    @property
    def log_path(self) -> Path:
        return self.tmpdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> Self:
        """Spawn the server and wait until it answers; raise RuntimeError (with the log tail) if not."""
        if self.running():
            return self
        if port_open(self.host, self.port):
            raise RuntimeError(f"{self.name}: {self.host}:{self.port} is already in use")
        cmd = list(self._command())
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmpdir,
                env=self._env(),
                start_new_session=True,  # own process group: stop() signals the whole group
            )
        atexit.register(self._kill_at_exit)
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._reap()
                raise RuntimeError(
                    f"{self.name} exited with code {code} during start-up: {' '.join(cmd)}\n"
                    f"--- {self.log_path} ---\n{log_tail(self.log_path)}"
                )
            if port_open(self.host, self.port):
                try:
                    if self._probe():
                        return self
                except Exception as exc:  # noqa: BLE001 -- any client error means "not ready yet"
                    last_error = exc
            if time.monotonic() >= deadline:
                self._reap()
                raise RuntimeError(
                    f"{self.name} on {self.host}:{self.port} not ready within {timeout:.0f}s"
                    f" (last probe error: {last_error!r}): {' '.join(cmd)}\n"
                    f"--- {self.log_path} ---\n{log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``), reap it, remove the temp dir."""
        self._reap(timeout)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def restart(self, timeout: float = 30.0, stop_timeout: float = 10.0) -> Self:
        """Stop and start again on the same port (state held in memory is lost)."""
        self._reap(stop_timeout)
        return self.start(timeout)

    def _reap(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc, timeout)
        atexit.unregister(self._kill_at_exit)

    def _kill_at_exit(self) -> None:
        # Safety net if the owner never calls stop(): don't leave servers behind the interpreter.
        self.stop(timeout=2.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running() else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"
