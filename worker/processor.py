"""One micro-batch of one pipeline: decode, look up the cache, classify the misses, build outputs.

Knows Redis (through ResultCache) but not Kafka: records come in, messages to send come out,
in input order, so that the caller can keep per-key order when it produces them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

import structlog

from pipelines.model import Model
from worker import metrics
from worker.cache import DELIVERED, ResultCache, cache_key, id_key, results_match
from worker.codec import DecodeError, InputEvent, Source, decode, encode_dead_letter, encode_output
from worker.config import Pipeline
from worker.limits import DEFAULT_MAX_EVENT_BYTES, MAX_KEY_BYTES, MAX_MESSAGE_BYTES
from worker.model_pool import ModelPool, ModelUnavailable

log = structlog.get_logger(__name__)

# Dead-letter codes the processor adds to the codec's DecodeError codes.
DUPLICATE_ID = "duplicate_id"  # an explicit id already claimed by another source record
OUTPUT_TOO_LARGE = "output_too_large"
# A language the pipeline does not serve (other_languages = "dead_letter").
UNSUPPORTED_LANGUAGE = "unsupported_language"
# A pipeline turns an event away for its language only when the detector is at least this sure:
# short texts ("FYI" reads as Swedish at 0.34) stay with the pipeline they were sent to.
LANGUAGE_SURE = 0.5
MODEL_ERROR = "model_error"
INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Record:
    raw: bytes | None
    key: bytes | None
    source: Source
    timestamp_ms: float | None = None


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    dead_letter: bool = False
    journal: tuple[str, str] | None = None  # (journal key, source) of the event id this answers


@dataclass(frozen=True)
class Found:
    """One text's answer, from the model or the cache."""

    results: dict[str, Any]
    truncated: bool
    cached: bool
    coverage: float = 1.0
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class LoadedModel:
    """One model with its version: a batch uses one snapshot, even across a hot reload."""

    model: Model
    version: str
    meta: dict[str, str]
    labels: dict[str, list[str]]  # per task of the pipeline: what a cached result may say


class BatchProcessor:
    def __init__(
        self,
        pipeline: Pipeline,
        model: Model,
        cache: ResultCache,
        pool: ModelPool,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.pipeline = pipeline
        self.cache = cache
        self.pool = pool  # the caller holds one of the pipeline's instances for each batch it passes on
        self.max_event_bytes = max_event_bytes
        self.use(model)

    def use(self, model: Model) -> None:
        """Swap the model (hot reload); batches already started finish with the old one."""
        version = model.version(self.pipeline.model_heads)
        labels = {task: model.labels[ref] for ref, task in zip(self.pipeline.model_heads, self.pipeline.model_tasks)}
        self.loaded = LoadedModel(model, version, {"name": model.name, "version": version}, labels)

    @property
    def model_version(self) -> str:
        return self.loaded.version

    async def process(self, records: list[Record]) -> list[Outgoing | None]:
        """One entry per record, in input order: an output, a dead letter, or None for a record
        whose output was already delivered. Raises only ModelUnavailable (the caller holds the
        batch); any other failure dead-letters the batch as internal_error (raw bytes kept)."""
        name = self.pipeline.name
        try:
            out = await self._process(records)
        except ModelUnavailable:
            raise
        except Exception as exc:
            log.exception("batch_failed", pipeline=name, events=len(records), error=f"{type(exc).__name__}: {exc}")
            detail = f"the worker failed on this batch ({type(exc).__name__}); see the worker log"
            out = [self._dead_letter(INTERNAL_ERROR, detail, r) for r in records]
        metrics.EVENTS_IN.labels(name).inc(len(records))
        metrics.BATCH_SIZE.labels(name).observe(len(records))
        return out

    def _dead_letter(self, code: str, detail: str, record: Record) -> Outgoing:
        metrics.DEAD_LETTERS.labels(self.pipeline.name, code).inc()
        key = record.key if record.key is None or len(record.key) <= MAX_KEY_BYTES else None
        value = encode_dead_letter(code, detail, record.source, record.raw)
        return Outgoing(self.pipeline.dead_letter, key, value, dead_letter=True)

    async def _process(self, records: list[Record]) -> list[Outgoing | None]:
        name = self.pipeline.name
        model = self.loaded
        slots: list[Outgoing | InputEvent | None] = []
        for record in records:
            try:
                slots.append(decode(record.raw, record.source, self.max_event_bytes, self.pipeline.input_format))
            except DecodeError as err:
                log.warning("dead_letter", pipeline=name, error=err.code, detail=err.detail, **record.source.__dict__)
                slots.append(self._dead_letter(err.code, err.detail, record))
        by_source = {r.source: r for r in records}
        slots, languages = await self._languages(slots, by_source)
        slots, claims = await self._journal(slots, by_source)
        events = [s for s in slots if isinstance(s, InputEvent)]
        found = await self._results(events, model)
        out: list[Outgoing | None] = []
        now_ms = time.time() * 1000
        for slot in slots:
            if not isinstance(slot, InputEvent):
                out.append(slot)
                continue
            record = by_source[slot.source]
            try:
                output = self._output(slot, record, found.get(slot.source), languages.get(slot.source), model, now_ms)
                out.append(replace(output, journal=claims.get(slot.source)))
            except Exception as exc:  # one event's failure must not dead-letter the others
                log.exception(
                    "event_failed", pipeline=name, error=f"{type(exc).__name__}: {exc}", **slot.source.__dict__
                )
                detail = f"the worker failed on this event ({type(exc).__name__}); see the worker log"
                out.append(replace(self._dead_letter(INTERNAL_ERROR, detail, record), journal=claims.get(slot.source)))
        return out

    async def settle(self, delivered: list[Outgoing | None]) -> None:
        """Once the broker confirmed the batch: its outputs' ids are journaled as delivered, and
        the ids of its dead letters are released (the event may be replayed)."""
        settled = [o for o in delivered if o is not None and o.journal is not None]
        await self.cache.journal_settle([(*o.journal, not o.dead_letter) for o in settled])

    def _output(
        self,
        event: InputEvent,
        record: Record,
        found: Found | None,
        language: dict[str, Any] | None,
        model: LoadedModel,
        now_ms: float,
    ) -> Outgoing:
        if found is None:  # the model failed on this text alone
            return self._dead_letter(MODEL_ERROR, "the model failed on this event; see the worker log", record)
        latency = now_ms - record.timestamp_ms if record.timestamp_ms else 0.0
        results = self.pipeline.results_for(found.results, email=event.email is not None)
        value = encode_output(
            event,
            results,
            model.meta,
            cached=found.cached,
            truncated=found.truncated,
            latency_ms=latency,
            language={**(language or {"code": "und", "confidence": 0.0}), "coverage": found.coverage},
            extra=found.extra,
        )
        key = record.key if record.key is not None else event.id.encode("utf-8")
        if len(key) + len(value) > MAX_MESSAGE_BYTES:
            detail = (
                f"the output would be {len(key) + len(value)} bytes, over the {MAX_MESSAGE_BYTES}-byte message limit"
            )
            log.warning(
                "dead_letter",
                pipeline=self.pipeline.name,
                error=OUTPUT_TOO_LARGE,
                detail=detail,
                **event.source.__dict__,
            )
            return self._dead_letter(OUTPUT_TOO_LARGE, detail, record)
        if found.extra is not None and "answer" in found.extra:
            metrics.ANSWERS.labels(self.pipeline.name, str(found.extra["answer"] is not None).lower()).inc()
        return Outgoing(self.pipeline.route_for(results, found.extra), key, value)

    async def _languages(
        self, slots: list[Outgoing | InputEvent | None], by_source: dict[Source, Record]
    ) -> tuple[list[Outgoing | InputEvent | None], dict[Source, dict[str, Any]]]:
        """Each event's language; events in a language the pipeline does not serve are routed as
        they came, dead-lettered, or kept, as the pipeline says. "und" (no letters, or not sure)
        is always kept, as is a text the detector is not sure of (LANGUAGE_SURE)."""
        from pipelines.language import detect

        events = [s for s in slots if isinstance(s, InputEvent)]
        if not events:
            return slots, {}
        found = await asyncio.to_thread(lambda: [detect(e.text) for e in events])
        languages = {e.source: {"code": f.code, "confidence": round(f.confidence, 4)} for e, f in zip(events, found)}
        pipeline = self.pipeline
        if pipeline.other_languages == "process":
            return slots, languages
        out: list[Outgoing | InputEvent | None] = []
        for slot in slots:
            language = languages[slot.source] if isinstance(slot, InputEvent) else {"code": "und", "confidence": 0.0}
            code = language["code"]
            if code == "und" or language["confidence"] < LANGUAGE_SURE or pipeline.serves(code):
                out.append(slot)
                continue
            assert isinstance(slot, InputEvent)
            record = by_source[slot.source]
            metrics.OTHER_LANGUAGE.labels(pipeline.name, code, pipeline.other_languages).inc()
            if pipeline.other_languages == "route":
                assert pipeline.other_languages_topic is not None
                log.info(
                    "other_language",
                    pipeline=pipeline.name,
                    language=code,
                    routed_to=pipeline.other_languages_topic,
                    **slot.source.__dict__,
                )
                out.append(Outgoing(pipeline.other_languages_topic, record.key, record.raw or b""))
            else:
                served = ", ".join(pipeline.languages)
                detail = f"the text is in {code!r}; this pipeline serves {served}"
                log.info(
                    "dead_letter",
                    pipeline=pipeline.name,
                    error=UNSUPPORTED_LANGUAGE,
                    detail=detail,
                    **slot.source.__dict__,
                )
                out.append(self._dead_letter(UNSUPPORTED_LANGUAGE, detail, record))
        return out, languages

    async def _journal(
        self, slots: list[Outgoing | InputEvent | None], by_source: dict[Source, Record]
    ) -> tuple[list[Outgoing | InputEvent | None], dict[Source, tuple[str, str]]]:
        """Look up each event id in the delivery journal (Redis, TTL = the cache TTL), claiming the
        new ones for their source record (topic:partition:offset):

        - claimed by this record (new, or a redelivery that was not confirmed): classify it;
        - delivered by this record (a redelivery after a crash before the commit): None, nothing
          to produce, so duplicates after a crash are bounded by the batches in flight;
        - held by another record: a duplicate_id dead letter.

        While Redis is down nothing is journaled: at-least-once, duplicates go through.
        """
        events = [s for s in slots if isinstance(s, InputEvent)]
        if not events:
            return slots, {}
        # The source record, told apart from one at the same offset of a recreated topic by its timestamp.
        mine = [_record_tag(by_source[e.source]) for e in events]
        keys = [
            id_key(self.pipeline.name, e.source.topic, tag if e.id == e.source.derived_id() else e.id)
            for e, tag in zip(events, mine)
        ]
        entries = await self.cache.journal_begin(keys, mine)
        outcome: dict[Source, Outgoing | None] = {}
        claims: dict[Source, tuple[str, str]] = {}
        for event, key, source, entry in zip(events, keys, mine, entries):
            if entry is None:
                continue
            owner, state = entry
            if owner != source:
                detail = f"id {event.id[:80]!r} was first used by record {owner}"
                log.warning(
                    "dead_letter",
                    pipeline=self.pipeline.name,
                    error=DUPLICATE_ID,
                    detail=detail,
                    **event.source.__dict__,
                )
                outcome[event.source] = self._dead_letter(DUPLICATE_ID, detail, by_source[event.source])
            elif state == DELIVERED:
                metrics.REDELIVERED.labels(self.pipeline.name).inc()
                outcome[event.source] = None
            else:
                claims[event.source] = (key, source)
        return [outcome[s.source] if isinstance(s, InputEvent) and s.source in outcome else s for s in slots], claims

    async def _results(self, events: list[InputEvent], model: LoadedModel) -> dict[Source, Found]:
        """Each event's answer: from Redis where it has it, else from the model."""
        if not events:
            return {}
        name = self.pipeline.name
        keys = [cache_key(model.version, self.pipeline.model_tasks, e.text) for e in events]
        hits = await self.cache.get_many(keys)
        found: dict[Source, Found] = {}
        misses: dict[str, list[InputEvent]] = {}  # one model call per distinct text
        for event, key, hit in zip(events, keys, hits):
            if hit is not None and self._usable(hit, model):
                found[event.source] = Found(hit["results"], hit["truncated"], True, hit["coverage"], hit["extra"])
            else:
                misses.setdefault(key, []).append(event)
        metrics.CACHE_HITS.labels(name).inc(len(events) - sum(len(v) for v in misses.values()))
        metrics.CACHE_MISSES.labels(name).inc(sum(len(v) for v in misses.values()))
        if misses:
            texts = [group[0].text for group in misses.values()]
            started = time.perf_counter()
            predictions = await self.pool.predict(name, model.model, texts, self.pipeline.model_heads)
            metrics.MODEL_SECONDS.labels(name).observe(time.perf_counter() - started)
            to_cache = {}
            for (key, group), prediction in zip(misses.items(), predictions):
                if prediction is None:
                    continue
                to_cache[key] = {
                    "results": prediction.results,
                    "truncated": prediction.truncated,
                    "coverage": prediction.coverage,
                    "extra": prediction.extra,
                }
                for event in group:
                    found[event.source] = Found(
                        prediction.results, prediction.truncated, False, prediction.coverage, prediction.extra
                    )
            await self.cache.set_many(to_cache)
        return found

    def _usable(self, hit: dict[str, Any], model: LoadedModel) -> bool:
        """A cached answer with every field this pipeline writes; anything else is a miss."""
        extra = hit.get("extra")
        coverage = hit.get("coverage")
        return (
            results_match(hit["results"], model.labels)
            and isinstance(coverage, int | float)
            and not isinstance(coverage, bool)
            and isinstance(extra, dict)
            and self._extra_keys <= set(extra)
        )

    @property
    def _extra_keys(self) -> set[str]:
        keys = {"answer", "candidates"} if self.pipeline.answers is not None else set()
        return keys | ({"embedding"} if self.pipeline.embedding else set())


def _record_tag(record: Record) -> str:
    """topic:partition:offset@timestamp: one record, across redeliveries and topic recreations."""
    stamp = f"@{int(record.timestamp_ms)}" if record.timestamp_ms else ""
    return record.source.derived_id() + stamp
