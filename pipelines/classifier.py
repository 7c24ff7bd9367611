"""The encoder and its task heads behind the model boundary (`pipelines.model.Model`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from pipelines.encoder import Encoder, Windows
from pipelines.heads import Head, load_head
from pipelines.model import Prediction
from pipelines.registry import ModelNotFoundError, resolve_head_dir, task_name


class Answers(Protocol):
    """A knowledge base (`pipelines.answers.KnowledgeBase`): answers from question embeddings."""

    version: str

    def answer(self, vectors: torch.Tensor, texts: list[str] | None = None) -> list[dict[str, Any]]: ...


@dataclass
class Prepared:
    texts: list[str]
    windows: Windows


class Classifier:
    """One shared encoder pass feeds every head, and the knowledge base when there is one.

    Heads are keyed by their reference as configured (a committed head's name or a directory), so
    that two heads whose directories share a base name stay apart; results are keyed by task name
    (`task_name`: the name, or the directory's base name).
    """

    name: str
    instances: int

    def __init__(
        self,
        encoder: Encoder,
        heads: dict[str, Head],
        head_versions: dict[str, str] | None = None,
        *,
        answers: Answers | None = None,
        embedding: bool = False,
    ) -> None:
        if not heads and answers is None:
            raise ModelNotFoundError("no heads configured")
        for name, head in heads.items():
            _check_encoder(name, head, encoder)
        self.encoder = encoder
        self.name = encoder.name
        self.instances = encoder.instances
        self.heads = {name: head.eval() for name, head in heads.items()}
        self.answers = answers
        self.embedding = embedding
        needs_vector = answers is not None or embedding
        self.layers = tuple(
            sorted({layer for h in heads.values() for layer in h.spec.layers} | ({-1} if needs_vector else set()))
        )
        versions = head_versions or {name: "in-memory" for name in heads}
        self._versions = versions

    @classmethod
    def load(
        cls, encoder: Encoder, head_names: list[str], *, answers: Answers | None = None, embedding: bool = False
    ) -> Classifier:
        heads: dict[str, Head] = {}
        versions: dict[str, str] = {}
        for ref in dict.fromkeys(head_names):
            heads[ref], versions[ref] = load_head(resolve_head_dir(ref))
        return cls(encoder, heads, versions, answers=answers, embedding=embedding)

    @property
    def labels(self) -> dict[str, list[str]]:
        return {name: list(h.spec.labels) for name, h in self.heads.items()}

    def version(self, tasks: list[str] | None = None) -> str:
        """A content hash of the encoder weights and the heads used: in every output and cache key."""
        refs = sorted(self._refs(tasks))
        parts = [self.encoder.version] + [f"{r}={self._versions[r]}" for r in refs]
        if self.answers is not None:
            parts.append(f"answers={self.answers.version}")
        if self.embedding:
            parts.append("embedding")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]

    def predict(self, texts: list[str], tasks: list[str] | None = None) -> list[Prediction]:
        self._check(tasks)
        return self.run(self.prepare(texts), tasks)

    def describe(self) -> dict[str, str | int]:
        e = self.encoder
        return {"device": str(e.device), "precision": e.precision, "model_instances": e.instances, "threads": e.threads}

    def warm_up(self) -> None:
        """One small batch through every head, so that the first real batch is not slow."""
        self.predict(["warm-up"] * 8)

    def prepare(self, texts: list[str]) -> Prepared:
        """Tokenization only: may run on another thread while `run` executes the previous batch."""
        if not texts:
            return Prepared([], Windows([], [], []))
        return Prepared(list(texts), self.encoder.windows(texts))

    def _check(self, tasks: list[str] | None) -> None:
        self._refs(tasks)

    def _refs(self, heads: list[str] | None) -> list[str]:
        """The loaded heads asked for: by reference, or by task name when one head has it."""
        if not heads:
            return list(self.heads)
        by_task: dict[str, list[str]] = {}
        for ref in self.heads:
            by_task.setdefault(task_name(ref), []).append(ref)
        refs = [h if h in self.heads else (by_task.get(h) or [None, None])[0] for h in heads]
        unknown = [h for h, r in zip(heads, refs) if r is None or (h not in self.heads and len(by_task[h]) > 1)]
        if unknown:
            raise KeyError(f"unknown heads {unknown}; loaded: {sorted(self.heads)}")
        return [r for r in refs if r is not None]

    def run(self, prepared: Prepared, tasks: list[str] | None = None) -> list[Prediction]:
        """The encoder pass and every head, on prepared texts."""
        refs = self._refs(tasks)
        texts = prepared.texts
        if not texts:
            return []
        encoded = self.encoder.encode_windows(prepared.windows, self.layers)
        out = [Prediction({}, truncated, coverage) for truncated, coverage in zip(encoded.truncated, encoded.coverage)]
        if self.answers is not None or self.embedding:
            vectors = torch.nn.functional.normalize(encoded.features[-1], dim=1)
            if self.answers is not None:
                for prediction, found in zip(out, self.answers.answer(vectors, prepared.texts)):
                    prediction.extra.update(found)
            if self.embedding:
                for prediction, vector in zip(out, vectors.tolist()):
                    prediction.extra["embedding"] = [round(x, 6) for x in vector]
        with torch.inference_mode():
            for ref in refs:
                head, task = self.heads[ref], task_name(ref)
                probs = torch.softmax(head.predict_features(encoded.features, texts), dim=1)
                best = probs.argmax(dim=1)
                labels = head.spec.labels
                for i, (row, top) in enumerate(zip(probs.tolist(), best.tolist())):
                    out[i].results[task] = {
                        "label": labels[top],
                        "score": round(row[top], 6),
                        "scores": {label: round(p, 6) for label, p in zip(labels, row)},
                    }
        return out


def _check_encoder(name: str, head: Head, encoder: Encoder) -> None:
    """A head answers only on the encoder it was trained on: same width, and the same weights
    when the head records them (`files`, the content hash of the encoder's files)."""
    trained = head.spec.encoder or {}
    if head.spec.input_dim != encoder.hidden_size:
        mismatch = f"expects {head.spec.input_dim}-dim features but the encoder gives {encoder.hidden_size}"
    elif trained.get("files") and encoder.files != "in-memory" and trained["files"] != encoder.files:
        mismatch = f"was trained on {trained.get('name')} ({trained['files']}), not on {encoder.name} ({encoder.files})"
    else:
        return
    raise ModelNotFoundError(
        f"head {name!r} {mismatch}: use it with the encoder it was trained on, or train it on this one with `bertstream train`"
    )
