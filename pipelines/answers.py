"""Answer retrieval: the closest question of a knowledge base, or an honest "no answer".

A knowledge base (KB) is a JSONL file, one entry per line:
``{"id": str, "question": str | [str, ...], "answer": str, ...extra fields}``. Every phrasing is
embedded like an incoming question (symmetric question-question matching); an entry scores the
cosine of its best phrasing, and the best entry is the answer when it scores at least the threshold.
Search is exact: one matrix product on the encoder's device. The phrasings' embeddings are cached
on disk by file content and encoder version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pipelines.encoder import Encoder
from pipelines.registry import ModelNotFoundError, cache_dir

log = logging.getLogger(__name__)

# Calibrated on bertstream/demo/data/support_eval.jsonl with multilingual-e5-small (docs/answers.md).
DEFAULT_THRESHOLD = 0.873
RESERVED = ("id", "question", "answer")
CHUNK = 256  # phrasings per embed() call: the unit of the progress bar
PROGRESS_FROM = 300  # phrasings: below this, encoding is quick and quiet


class KnowledgeBaseError(ModelNotFoundError):
    """The KB file is missing or invalid; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class AnswerSettings:
    path: Path
    threshold: float = DEFAULT_THRESHOLD  # cosine below which the answer is null
    top_k: int = 3

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise KnowledgeBaseError(f"answer threshold {self.threshold} is not a cosine: give one in [-1, 1]")
        if self.top_k < 1:
            raise KnowledgeBaseError(f"answer top_k {self.top_k} must be at least 1")


@dataclass(frozen=True)
class Entry:
    id: str
    questions: tuple[str, ...]
    answer: str
    fields: dict[str, Any] = field(default_factory=dict)  # every other key of the line, passed through
    line: int = 0


def parse(path: Path, data: bytes) -> list[Entry]:
    """The entries of a KB file's bytes, validated; KnowledgeBaseError on the first bad line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KnowledgeBaseError(f"{path}:{line}: not UTF-8: save the file as UTF-8") from None
    entries: list[Entry] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        entry = _entry(path, number, raw)
        if entry.id in first_line:
            raise KnowledgeBaseError(
                f"{path}:{number}: duplicate id {entry.id!r} (first on line {first_line[entry.id]}): "
                "give every entry its own id"
            )
        first_line[entry.id] = number
        entries.append(entry)
    if not entries:
        raise KnowledgeBaseError(f"{path}: no entries: write one JSON object per line with id, question and answer")
    return entries


def _entry(path: Path, number: int, raw: str) -> Entry:
    where = f"{path}:{number}"
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise KnowledgeBaseError(
            f"{where}: not valid JSON ({exc.msg}, column {exc.colno}): write one JSON object per line"
        ) from None
    if not isinstance(doc, dict):
        raise KnowledgeBaseError(f'{where}: {_kind(doc)}, not an object: write {{"id", "question", "answer"}}')
    for key in RESERVED:
        if key not in doc:
            raise KnowledgeBaseError(f"{where}: no {key!r}: every entry needs id, question and answer")
    entry_id, question, answer = doc["id"], doc["question"], doc["answer"]
    if not isinstance(entry_id, str):
        raise KnowledgeBaseError(f"{where}: 'id' is {_kind(entry_id)}: make it a string (quote it)")
    if not entry_id.strip():
        raise KnowledgeBaseError(f"{where}: empty 'id': give the entry a non-empty id")
    questions = [question] if isinstance(question, str) else question
    if not isinstance(questions, list) or not all(isinstance(q, str) for q in questions):
        raise KnowledgeBaseError(
            f"{where}: 'question' of {entry_id!r} is {_kind(question)}: give a string or a list of strings"
        )
    if not questions or not all(q.strip() for q in questions):
        raise KnowledgeBaseError(f"{where}: empty question in {entry_id!r}: write at least one non-empty phrasing")
    if not isinstance(answer, str):
        raise KnowledgeBaseError(f"{where}: 'answer' of {entry_id!r} is {_kind(answer)}: make it a string")
    if not answer.strip():
        raise KnowledgeBaseError(f"{where}: empty 'answer' in {entry_id!r}: write the answer text")
    extra = {k: v for k, v in doc.items() if k not in RESERVED}
    return Entry(entry_id, tuple(q.strip() for q in questions), answer, extra, number)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


@dataclass
class Hits:
    """One question's top entries (indices into KnowledgeBase.entries), best first."""

    scores: list[float]
    entries: list[int]
    phrasing: int  # the best phrasing of the top entry (index into KnowledgeBase.phrasings)


class KnowledgeBase:
    def __init__(
        self,
        settings: AnswerSettings,
        entries: list[Entry],
        vectors: torch.Tensor,
        *,
        content: str,
        encoder_version: str,
        device: torch.device | str = "cpu",
    ) -> None:
        """`vectors` [phrasings, hidden]: L2-normalized, the phrasings of `entries` in order."""
        self.settings = settings
        self.entries = entries
        owner = [i for i, e in enumerate(entries) for _ in e.questions]
        if vectors.shape[0] != len(owner):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(owner)} phrasings")
        self.phrasings = [q for e in entries for q in e.questions]
        self.device = torch.device(device)
        self.vectors = vectors.to(self.device, torch.float32)
        self.owner = torch.tensor(owner, dtype=torch.long, device=self.device)
        self._most = max(len(e.questions) for e in entries)  # phrasings of the most phrased entry
        self.content = content
        key = f"{content}|{encoder_version}|{settings.threshold!r}|{settings.top_k}"
        self.version = hashlib.sha256(key.encode()).hexdigest()[:12]

    @classmethod
    def load(cls, settings: AnswerSettings, encoder: Encoder, cache_dir: Path | None = None) -> KnowledgeBase:
        path = Path(settings.path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KnowledgeBaseError(
                f"{path}: cannot read the knowledge base ({exc.strerror or exc}): give a JSONL file"
            ) from None
        entries = parse(path, data)
        content = hashlib.sha256(data).hexdigest()[:16]
        phrasings = [q for e in entries for q in e.questions]
        vectors = _cached_vectors(encoder, phrasings, content, cache_dir)
        return cls(settings, entries, vectors, content=content, encoder_version=encoder.version, device=encoder.device)

    def __len__(self) -> int:
        return len(self.entries)

    def search(self, vectors: torch.Tensor, k: int | None = None) -> list[Hits]:
        """The top-k entries per question, each scored by its best phrasing.

        Exact without scoring every entry: the best `k * most phrasings of one entry` phrasings
        always hold the best phrasing of each of the top k entries."""
        k = min(k or self.settings.top_k, len(self.entries))
        sims = vectors.to(self.device, torch.float32) @ self.vectors.T
        top_scores, top_phrasings = torch.topk(sims, min(sims.shape[1], k * self._most), dim=1)
        owners = self.owner[top_phrasings]
        out = []
        for scores, phrasings, entries in zip(top_scores.tolist(), top_phrasings.tolist(), owners.tolist()):
            hits = Hits([], [], phrasings[0])
            for score, entry in zip(scores, entries):
                if entry not in hits.entries:
                    hits.entries.append(entry)
                    hits.scores.append(score)
                    if len(hits.entries) == k:
                        break
            out.append(hits)
        return out

    def answer(self, vectors: torch.Tensor) -> list[dict[str, Any]]:
        """Per question ([n, hidden] L2-normalized, Encoder.embed): {"answer": {"id", "text", "score",
        "question", "fields"} | None, "candidates": [{"id", "score"}, ... top_k]}. "question" is the
        matched phrasing; "fields" holds the entry's extra keys."""
        if vectors.shape[0] == 0:
            return []
        out: list[dict[str, Any]] = []
        for hits in self.search(vectors):
            candidates = [{"id": self.entries[i].id, "score": round(s, 4)} for s, i in zip(hits.scores, hits.entries)]
            answer = None
            if hits.scores[0] >= self.settings.threshold:
                entry = self.entries[hits.entries[0]]
                answer = {
                    "id": entry.id,
                    "text": entry.answer,
                    "score": round(hits.scores[0], 4),
                    "question": self.phrasings[hits.phrasing],
                    "fields": entry.fields,
                }
            out.append({"answer": answer, "candidates": candidates})
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.settings.path),
            "entries": len(self.entries),
            "phrasings": len(self.phrasings),
            "threshold": self.settings.threshold,
            "top_k": self.settings.top_k,
            "version": self.version,
        }


def default_cache_dir() -> Path:
    return cache_dir() / "answers"


def _cached_vectors(encoder: Encoder, phrasings: list[str], content: str, directory: Path | None) -> torch.Tensor:
    """The phrasings' embeddings, from the cache when it holds this file and encoder (float16 on disk;
    fresh ones are rounded the same way so that a cold and a warm start answer alike)."""
    if encoder.version == "in-memory":  # weights not on disk: nothing to key a cache by
        return _rounded(embed_all(encoder, phrasings))
    path = (directory or default_cache_dir()) / f"{content}-{encoder.version}.safetensors"
    if path.is_file():
        try:
            vectors = load_file(str(path))["vectors"]
            if vectors.shape == (len(phrasings), encoder.hidden_size):
                return vectors.to(torch.float32)
            log.warning("answer cache %s does not match the knowledge base: encoding again", path)
        except (SafetensorError, OSError, KeyError, ValueError) as exc:  # damaged: recompute
            log.warning("answer cache %s is unreadable (%s): encoding again", path, type(exc).__name__)
    vectors = _rounded(embed_all(encoder, phrasings))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"vectors": vectors.to(torch.float16).contiguous()}, str(tmp), metadata={"encoder": encoder.version})
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot write the answer cache %s (%s): the next start encodes again", path, exc)
    return vectors


def _rounded(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.to(torch.float16).to(torch.float32)


def embed_all(encoder: Encoder, texts: list[str]) -> torch.Tensor:
    """Encoder.embed over many texts in length-sorted chunks, with a progress bar when there are many."""
    out = torch.zeros(len(texts), encoder.hidden_size)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with tqdm(
        total=len(texts), desc="encode knowledge base", unit="phrasing", disable=len(texts) <= PROGRESS_FROM
    ) as bar:
        for start in range(0, len(texts), CHUNK):
            index = order[start : start + CHUNK]
            out[torch.tensor(index)] = encoder.embed([texts[i] for i in index])
            bar.update(len(index))
    return out
