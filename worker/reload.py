"""Hot reload of the model and heads: on SIGHUP or when their files change, with no restart.

The new classifier is loaded and warmed on a thread of its own while the old one keeps
serving; then it is swapped in between batches. A failed load keeps the old model.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import structlog

from worker import metrics

log = structlog.get_logger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


class Model(Protocol):
    """What the reloader swaps: a model, or the worker's set of them."""

    def warm_up(self) -> None: ...

    def version(self) -> str: ...


def fingerprint(directories: list[Path]) -> Fingerprint:
    """(path, mtime, size) of every file under the directories (or of the file itself, where one
    is a file): changes when any file does."""
    entries = []
    for directory in directories:
        top = Path(directory)
        for path in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
            stat = path.stat()
            entries.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


class ModelReloader:
    def __init__(
        self,
        load: Callable[[], Model],
        directories: Callable[[], list[Path]],
        apply: Callable[[Model], None],
    ) -> None:
        self._load = load
        self._directories = directories
        self._apply = apply
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reload")
        self._lock = asyncio.Lock()
        self._seen = fingerprint(directories())
        self.reloads = 0

    def install_signal(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))

    def _load_warm(self) -> Model:
        model = self._load()
        model.warm_up()
        return model

    def _fingerprint(self) -> Fingerprint | None:
        """The files' fingerprint now; None while they cannot be read (a head half copied)."""
        try:
            return fingerprint(self._directories())
        except Exception as exc:  # noqa: BLE001 - missing or vanishing files must not stop the worker
            log.warning("model_files_unreadable", error=f"{type(exc).__name__}: {exc}", effect="keeping the old model")
            return None

    def _failed(self, reason: str, error: str) -> bool:
        metrics.MODEL_RELOADS.labels("failed").inc()
        log.error("model_reload_failed", reason=reason, error=error, effect="keeping the old model")
        return False

    async def reload(self, reason: str) -> bool:
        """Load and warm a new model off the event loop, then swap it in. The files are read
        before and after the load: if they changed meanwhile, the load is dropped (it may mix
        old and new files), and the next check loads them again."""
        async with self._lock:
            log.info("model_reloading", reason=reason)
            before = self._fingerprint()
            if before is None:
                return self._failed(reason, "the model files cannot be read")
            loop = asyncio.get_running_loop()
            try:
                new = await loop.run_in_executor(self._executor, self._load_warm)
            except Exception as exc:  # noqa: BLE001 - a bad new model must not take the worker down
                return self._failed(reason, f"{type(exc).__name__}: {exc}")
            if self._fingerprint() != before:
                return self._failed(
                    reason, "the model files changed while loading; loading them again at the next check"
                )
            self._seen = before
            self._apply(new)
            self.reloads += 1
            metrics.MODEL_RELOADS.labels("ok").inc()
            log.info("model_reloaded", reason=reason, version=new.version())
            return True

    async def check_files(self) -> None:
        """Reload when a file of the model or the heads changed since the last good load."""
        current = self._fingerprint()
        if current is not None and current != self._seen:
            await self.reload("files changed")
