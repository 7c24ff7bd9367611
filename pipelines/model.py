"""The model boundary: what the worker calls, and all it knows of the model side.

Texts in, per-task results out, in two steps so that tokenization can overlap the model's work
on the batch before (`prepare` on one thread, `run` on a model instance's thread). `Classifier`
implements it; tests of the streaming code can use a small fake without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

TaskResult = dict[str, Any]  # {"label": str, "score": float, "scores": {label: prob}}


@dataclass
class Prediction:
    results: dict[str, TaskResult]
    truncated: bool
    coverage: float = 1.0  # share of the read tokens that the vocabulary knows (not unknown)
    extra: dict[str, Any] = field(default_factory=dict)  # top-level output fields: answer, candidates, embedding


class Model(Protocol):
    name: str  # the encoder's name, reported in every output
    instances: int  # batches the model can run at once, one thread each

    @property
    def labels(self) -> dict[str, list[str]]:
        """Each task's labels."""
        ...

    def version(self, tasks: list[str] | None = None) -> str:
        """A content hash of what answers these tasks: in every output and cache key."""
        ...

    def prepare(self, texts: list[str]) -> Any:
        """Tokenization only; safe from one thread while `run` runs on others."""
        ...

    def run(self, prepared: Any, tasks: list[str] | None = None) -> list[Prediction]:
        """The model pass on prepared texts, one Prediction per text, in order."""
        ...

    def describe(self) -> dict[str, Any]:
        """How it runs (device, precision, instances, threads), for the start-up log line."""
        ...

    def warm_up(self) -> None:
        """One small batch, so that the first real batch is not slow."""
        ...
