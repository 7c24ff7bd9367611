"""NVIDIA MPS for the GPU bench's worker processes: their kernels then run on the GPU at once
instead of time-sliced, one process's context at a time.

The control daemon is started with a private pipe and log directory (no root, nothing changed for
other users of the GPU) and told to quit afterwards; the workers get the same directories in
their environment. Without `nvidia-cuda-mps-control`, or when it does not start, the workers run
without MPS and the report says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CONTROL = "nvidia-cuda-mps-control"


@contextmanager
def mps_daemon(device: str, log: Callable[[str], None] = lambda m: None) -> Iterator[dict[str, Any]]:
    """{"used": bool, "note": str, "env": {...}}: `env` is for the worker processes (empty without MPS)."""
    info: dict[str, Any] = {"used": False, "env": {}}
    if not device.startswith("cuda"):
        info["note"] = f"MPS not used: device {device} is not a GPU"
        yield info
        return
    control = shutil.which(CONTROL)
    if control is None:
        info["note"] = f"MPS not used: {CONTROL} is not on PATH, so the worker processes time-slice the GPU"
        yield info
        return
    root = Path(tempfile.mkdtemp(prefix="bertstream-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(root / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(root / "log")}
    for path in env.values():
        Path(path).mkdir()
    full_env = {**os.environ, **env}
    try:
        started = subprocess.run([control, "-d"], env=full_env, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["note"] = f"MPS not used: {CONTROL} -d failed ({exc!r}), so the worker processes time-slice the GPU"
        yield info
        return
    if started.returncode != 0:
        said = (started.stderr or started.stdout).decode(errors="replace").strip()[:200]
        info["note"] = (
            f"MPS not used: {CONTROL} -d exited {started.returncode} ({said}), so the worker processes time-slice the GPU"
        )
        yield info
        return
    info.update(
        used=True, env=env, note=f"MPS used: a control daemon of the bench's own (pipe directory {root / 'pipe'})"
    )
    log(info["note"])
    try:
        yield info
    finally:
        try:
            subprocess.run([control], input=b"quit\n", env=full_env, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log(f"MPS: quitting the control daemon failed: {exc!r}")
