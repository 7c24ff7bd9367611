"""Answer retrieval: the closest question of a knowledge base, or an honest "no answer".

A knowledge base (KB) is a JSONL file, one entry per line:
``{"id": str, "question": str | [str, ...], "answer": str, ...extra fields}``. Every phrasing is
embedded like an incoming question (symmetric question-question matching) and every answer as a
passage (the encoder's "passage" prompt, e5's query-to-passage training). An entry scores
``(cosine of its best phrasing + w * cosine of its answer) / (1 + w)``, ``w = answer_weight``
(0: phrasings alone), and the best entry is the answer when it scores at least the threshold of
the question's language. Search is exact: matrix products on the encoder's device. The
embeddings are cached on disk by file content and encoder version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pipelines.encoder import Encoder
from pipelines.language import detect
from pipelines.registry import ModelNotFoundError, cache_dir

log = logging.getLogger(__name__)

Threshold = float | Mapping[str, float]  # one cosine, or one per language code with a "default"
DEFAULT = "default"  # the threshold key for every language the mapping does not name (and "und")
# Chosen and calibrated by `bertstream eval-answers` on bertstream/demo/data/support_eval.jsonl with
# multilingual-e5-small (docs/answers.md): w by top-1; one threshold, as thresholds per language did
# no better on held-out questions once the answer is scored too (a mapping is still accepted).
DEFAULT_ANSWER_WEIGHT = 0.25
DEFAULT_THRESHOLD: Threshold = 0.865
RESERVED = ("id", "question", "answer")
CHUNK = 256  # phrasings per embed() call: the unit of the progress bar
PROGRESS_FROM = 300  # phrasings: below this, encoding is quick and quiet
# Cache files unused this long are removed when a new one is written: each edit of a knowledge base
# (or a new encoder) leaves a file behind, and another worker may still use a recent one.
CACHE_KEEP_SECONDS = 30 * 24 * 3600


class KnowledgeBaseError(ModelNotFoundError):
    """The KB file is missing or invalid; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class AnswerSettings:
    path: Path
    # Score under which the answer is null: one cosine, or {"en": .., "zh": .., "default": ..}.
    threshold: Threshold = DEFAULT_THRESHOLD
    top_k: int = 3
    answer_weight: float = DEFAULT_ANSWER_WEIGHT  # w of the answer's cosine in an entry's score; 0: phrasings only

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        if self.top_k < 1:
            raise KnowledgeBaseError(f"answer top_k {self.top_k} must be at least 1")
        weight = self.answer_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
            raise KnowledgeBaseError(
                f"answer weight {weight!r} is not a number >= 0: give one (0 scores by the phrasings alone)"
            )

    def threshold_for(self, language: str) -> float:
        return threshold_for(self.threshold, language)


def check_threshold(value: Any) -> float | dict[str, float]:
    """A valid threshold: a float, or a dict sorted by language code; KnowledgeBaseError (one line) if not."""
    if isinstance(value, Mapping):
        if DEFAULT not in value:
            raise KnowledgeBaseError(
                f"answer thresholds {sorted(map(str, value))} have no {DEFAULT!r}: add one for the other languages"
            )
        out: dict[str, float] = {}
        for language in sorted(value, key=str):
            if not isinstance(language, str) or not language.strip():
                raise KnowledgeBaseError(
                    f"answer threshold key {language!r} is not a language code: use codes such as 'en', 'zh'"
                )
            out[language] = _cosine(value[language], f"answer threshold for {language!r}")
        return out
    return _cosine(value, "answer threshold")


def _cosine(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KnowledgeBaseError(
            f"{what} is {_kind(value)}: give a cosine in [-1, 1] or a mapping of language to cosine"
        )
    if not -1.0 <= value <= 1.0:
        raise KnowledgeBaseError(f"{what} {value} is not a cosine: give one in [-1, 1]")
    return float(value)


def threshold_for(threshold: Threshold, language: str) -> float:
    """The threshold of a language code (pipelines.language.detect): its own, else the "default"."""
    if isinstance(threshold, Mapping):
        return threshold.get(language, threshold[DEFAULT])
    return threshold


def mix(phrasing: torch.Tensor, answer: torch.Tensor | None, weight: float) -> torch.Tensor:
    """Entry scores from the best-phrasing and the answer cosines: (phrasing + w * answer) / (1 + w),
    on the cosine's scale (so a threshold stays a number in [-1, 1]); the phrasings alone for w = 0."""
    if answer is None or weight == 0:
        return phrasing
    return (phrasing + weight * answer) / (1 + weight)


def answer_prompt(encoder: Encoder) -> str:
    """What answers are embedded with: the encoder's "passage" prompt (e5), else its own (MiniLM: none)."""
    return encoder.prompts.get("passage", encoder.prompt)


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
        answers: torch.Tensor | None = None,
    ) -> None:
        """`vectors` [phrasings, hidden]: L2-normalized, the phrasings of `entries` in order; `answers`
        [entries, hidden]: their answers embedded as passages. Without `answers` an entry scores by
        its phrasings alone, whatever `settings.answer_weight` says (`self.weight` is then 0)."""
        self.settings = settings
        self.entries = entries
        owner = [i for i, e in enumerate(entries) for _ in e.questions]
        if vectors.shape[0] != len(owner):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(owner)} phrasings")
        if answers is not None and answers.shape != (len(entries), vectors.shape[1]):
            raise ValueError(f"answer vectors {tuple(answers.shape)} for {len(entries)} entries")
        self.phrasings = [q for e in entries for q in e.questions]
        self.device = torch.device(device)
        self.vectors = vectors.to(self.device, torch.float32)
        self.owner = torch.tensor(owner, dtype=torch.long, device=self.device)
        self.answer_vectors = None if answers is None else answers.to(self.device, torch.float32)
        self.weight = float(settings.answer_weight) if answers is not None else 0.0
        self._most = max(len(e.questions) for e in entries)  # phrasings of the most phrased entry
        self._first = [0]  # each entry's phrasings are contiguous: entry i's start at _first[i]
        for e in entries:
            self._first.append(self._first[-1] + len(e.questions))
        self.content = content
        threshold = json.dumps(settings.threshold, sort_keys=True)
        key = f"{content}|{encoder_version}|{threshold}|{settings.top_k}|{self.weight!r}"
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
        key = f"{content}-{encoder.version}"
        vectors = _cached_vectors(encoder, phrasings, key, cache_dir)
        answers = None
        if settings.answer_weight > 0:  # the prompt comes from the model's files, which encoder.version covers
            texts = [e.answer for e in entries]
            answers = _cached_vectors(encoder, texts, f"{key}-answers", cache_dir, answer_prompt(encoder), "answer")
        return cls(
            settings,
            entries,
            vectors,
            content=content,
            encoder_version=encoder.version,
            device=encoder.device,
            answers=answers,
        )

    def __len__(self) -> int:
        return len(self.entries)

    def scores(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[n, entries] each: the cosine of every entry's best phrasing, and of its answer (None
        without answer vectors). `mix` of the two with `self.weight` is what `search` ranks by."""
        sims = vectors.to(self.device, torch.float32) @ self.vectors.T
        answer = None if self.answer_vectors is None else vectors.to(self.device, torch.float32) @ self.answer_vectors.T
        return self._best_per_entry(sims), answer

    def _best_per_entry(self, sims: torch.Tensor) -> torch.Tensor:
        best = torch.full((sims.shape[0], len(self.entries)), -math.inf, device=sims.device)
        return best.scatter_reduce_(1, self.owner.expand(sims.shape[0], -1), sims, "amax")

    def search(self, vectors: torch.Tensor, k: int | None = None) -> list[Hits]:
        """The top-k entries per question, by `mix` of best phrasing and answer.

        With w = 0, exact without scoring every entry: the best `k * most phrasings of one entry`
        phrasings always hold the best phrasing of each of the top k entries. With w > 0 every entry
        is scored (a per-entry max over the phrasings' cosines)."""
        k = min(k or self.settings.top_k, len(self.entries))
        queries = vectors.to(self.device, torch.float32)
        sims = queries @ self.vectors.T
        if self.weight == 0 or self.answer_vectors is None:
            return self._search_phrasings(sims, k)
        mixed = mix(self._best_per_entry(sims), queries @ self.answer_vectors.T, self.weight)
        top_scores, top_entries = torch.topk(mixed, k, dim=1)
        out = []
        for row, (scores, entries) in enumerate(zip(top_scores.tolist(), top_entries.tolist())):
            start, end = self._first[entries[0]], self._first[entries[0] + 1]  # the top entry's phrasings
            out.append(Hits(scores, entries, start + int(sims[row, start:end].argmax())))
        return out

    def _search_phrasings(self, sims: torch.Tensor, k: int) -> list[Hits]:
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

    def thresholds(self, texts: list[str] | None, n: int) -> list[float]:
        """Each question's threshold: by its language (pipelines.language.detect) when the threshold
        is a mapping and the texts are given, else the one threshold (or the mapping's "default")."""
        threshold = self.settings.threshold
        if texts is not None and len(texts) != n:
            raise ValueError(f"{len(texts)} texts for {n} question vectors")
        if not isinstance(threshold, Mapping):
            return [threshold] * n
        if texts is None:
            return [threshold[DEFAULT]] * n
        return [threshold_for(threshold, detect(text).code) for text in texts]

    def answer(self, vectors: torch.Tensor, texts: list[str] | None = None) -> list[dict[str, Any]]:
        """Per question ([n, hidden] L2-normalized, Encoder.embed; `texts`: the raw questions, which
        pick per-language thresholds): {"answer": {"id", "text", "score", "question", "fields"} | None,
        "candidates": [{"id", "score"}, ... top_k]}. "question" is the matched phrasing; "fields"
        holds the entry's extra keys."""
        thresholds = self.thresholds(texts, vectors.shape[0])
        if vectors.shape[0] == 0:
            return []
        out: list[dict[str, Any]] = []
        for hits, threshold in zip(self.search(vectors), thresholds):
            candidates = [{"id": self.entries[i].id, "score": round(s, 4)} for s, i in zip(hits.scores, hits.entries)]
            answer = None
            if hits.scores[0] >= threshold:
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
            "answer_weight": self.weight,
            "top_k": self.settings.top_k,
            "version": self.version,
        }


def default_cache_dir() -> Path:
    return cache_dir() / "answers"


def _cached_vectors(
    encoder: Encoder,
    texts: list[str],
    key: str,
    directory: Path | None,
    prompt: str | None = None,
    unit: str = "phrasing",
) -> torch.Tensor:
    """The texts' embeddings (with `prompt`, default the encoder's), from the cache file `key` when it
    holds them (float16 on disk; fresh ones are rounded the same way so that a cold and a warm start
    answer alike)."""
    if encoder.version == "in-memory":  # weights not on disk: nothing to key a cache by
        return _rounded(embed_all(encoder, texts, prompt, unit))
    path = (directory or default_cache_dir()) / f"{key}.safetensors"
    if path.is_file():
        try:
            vectors = load_file(str(path))["vectors"]
            if vectors.shape == (len(texts), encoder.hidden_size):
                _touch(path)
                return vectors.to(torch.float32)
            log.warning("answer cache %s does not match the knowledge base: encoding again", path)
        except (SafetensorError, OSError, KeyError, ValueError) as exc:  # damaged: recompute
            log.warning("answer cache %s is unreadable (%s): encoding again", path, type(exc).__name__)
    vectors = _rounded(embed_all(encoder, texts, prompt, unit))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"vectors": vectors.to(torch.float16).contiguous()}, str(tmp), metadata={"encoder": encoder.version})
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot write the answer cache %s (%s): the next start encodes again", path, exc)
        return vectors
    _prune(path.parent)
    return vectors


def _touch(path: Path) -> None:
    """Mark a cache file as used (its modification time), so that `_prune` keeps it."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still serves


def _prune(directory: Path, keep_seconds: float = CACHE_KEEP_SECONDS) -> None:
    """Remove the cache files of `directory` that no start has used for `keep_seconds`."""
    cutoff = time.time() - keep_seconds
    for old in directory.glob("*.safetensors"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:  # gone already (another worker pruned it), or not ours to remove
            continue


def _rounded(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.to(torch.float16).to(torch.float32)


def embed_all(encoder: Encoder, texts: list[str], prompt: str | None = None, unit: str = "phrasing") -> torch.Tensor:
    """Encoder.embed over many texts in length-sorted chunks, with a progress bar when there are many."""
    out = torch.zeros(len(texts), encoder.hidden_size)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with tqdm(total=len(texts), desc="encode knowledge base", unit=unit, disable=len(texts) <= PROGRESS_FROM) as bar:
        for start in range(0, len(texts), CHUNK):
            index = order[start : start + CHUNK]
            out[torch.tensor(index)] = encoder.embed([texts[i] for i in index], prompt=prompt)
            bar.update(len(index))
    return out
