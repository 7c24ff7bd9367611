"""Shared by `bertstream demo` and `bertstream bench`: services and a worker child process.

- `services()`: the broker and Redis from BERTSTREAM_KAFKA_BROKERS / BERTSTREAM_REDIS_URL, or
  embedded ones (tansu, redis-server) started on the caller's ExitStack;
- `worker_env()`: the environment of a worker child process;
- `start_ready_worker()`: start `bertstream worker`, stop it when the stack closes, wait for /readyz.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bertstream.devservices.process import stop_process_group
from bertstream.devservices.worker_process import start_worker_process, wait_ready
from worker.config import load_settings
from worker.connection import KafkaConnection


def services(
    stack: ExitStack,
    echo: Callable[[str], None] = lambda message: None,
    brokers: str | None = None,
    redis_url: str | None = None,
) -> tuple[KafkaConnection, str, dict[str, bool]]:
    """(Kafka connection, Redis URL, {"broker": embedded?, "redis": embedded?}).

    Given values win, then the env vars; what is still missing is started embedded on `stack`.
    A broker from the settings keeps their TLS and SASL settings (BERTSTREAM_KAFKA_*).
    A SIGTERM then unwinds like Ctrl-C, so that the stack stops every child it started.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    brokers = brokers or os.environ.get("BERTSTREAM_KAFKA_BROKERS")
    redis_url = redis_url or os.environ.get("BERTSTREAM_REDIS_URL")
    embedded = {"broker": not brokers, "redis": not redis_url}
    if not brokers:
        from bertstream.devservices.broker import EmbeddedBroker

        echo("starting the embedded Kafka-protocol broker (tansu)…")
        conn = stack.enter_context(EmbeddedBroker()).connection()
    else:
        conn = KafkaConnection.from_settings(load_settings(kafka_brokers=brokers))
    if not redis_url:
        from bertstream.devservices.redis_server import EmbeddedRedis

        echo("starting a Redis of our own…")
        redis_url = stack.enter_context(EmbeddedRedis()).url
    return conn, redis_url, embedded


def worker_env(brokers: str, redis_url: str, group_id: str, web_port: int, **extra: str) -> dict[str, str]:
    """The current environment plus the worker's settings (extra: NAME=value → BERTSTREAM_NAME)."""
    env = {
        **os.environ,
        "BERTSTREAM_KAFKA_BROKERS": brokers,
        "BERTSTREAM_REDIS_URL": redis_url,
        "BERTSTREAM_GROUP_ID": group_id,
        "BERTSTREAM_WEB_PORT": str(web_port),
        "BERTSTREAM_LOG_FORMAT": "json",
    }
    env.update({f"BERTSTREAM_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def start_ready_worker(
    stack: ExitStack,
    env: dict[str, str],
    pipelines: list[str],
    log_path: Path,
    web_port: int,
    timeout_s: float = 300,
    tick: Callable[[], None] = lambda: None,
) -> subprocess.Popen[bytes]:
    """A worker child process, ready (/readyz), stopped (SIGTERM, then SIGKILL) when `stack` closes.

    Raises bertstream.devservices.worker_process.WorkerStartError with the log tail when it dies or is not ready in time.
    """
    proc = start_worker_process(env, pipelines, log_path)
    stack.callback(stop_process_group, proc, 30.0)
    wait_ready(proc, web_port, log_path, timeout_s=timeout_s, tick=tick)
    return proc


def proc_memory_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A memory field of /proc/<pid>/status in MiB (VmRSS now, VmHWM the peak); None where absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    return proc_memory_mb(pid, "VmHWM")
