"""One micro-batch of one pipeline: decode, look up the cache, classify the misses, build outputs.

Knows Redis (through ResultCache) but not Kafka: records come in, messages to send come out,
in input order, so that the caller can keep per-key order when it produces them.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import structlog

from pipelines import Classifier, Prediction
from worker import metrics
from worker.cache import ResultCache, cache_key
from worker.codec import DecodeError, InputEvent, Source, decode, encode_dead_letter, encode_output
from worker.config import Pipeline

log = structlog.get_logger(__name__)


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


class BatchProcessor:
    def __init__(
        self,
        pipeline: Pipeline,
        classifier: Classifier,
        cache: ResultCache,
        executor: Executor,
        max_event_bytes: int = 1_000_000,
    ) -> None:
        self.pipeline = pipeline
        self.classifier = classifier
        self.cache = cache
        self.executor = executor
        self.max_event_bytes = max_event_bytes
        self.model_version = classifier.version(pipeline.tasks)
        self.model = {"name": classifier.encoder.name, "version": self.model_version}

    async def process(self, records: list[Record]) -> list[Outgoing]:
        name = self.pipeline.name
        metrics.EVENTS_IN.labels(name).inc(len(records))
        metrics.BATCH_SIZE.labels(name).observe(len(records))
        slots: list[Outgoing | InputEvent] = []
        for record in records:
            try:
                slots.append(decode(record.raw, record.source, self.max_event_bytes))
            except DecodeError as err:
                metrics.DEAD_LETTERS.labels(name, err.code).inc()
                log.warning("dead_letter", pipeline=name, error=err.code, detail=err.detail, **record.source.__dict__)
                value = encode_dead_letter(err.code, err.detail, record.source, record.raw)
                slots.append(Outgoing(self.pipeline.dead_letter, record.key, value, dead_letter=True))
        events = [s for s in slots if isinstance(s, InputEvent)]
        found = await self._results(events)
        out: list[Outgoing] = []
        now_ms = time.time() * 1000
        by_source = {r.source: r for r in records}
        for slot in slots:
            if isinstance(slot, Outgoing):
                out.append(slot)
                continue
            record = by_source[slot.source]
            if slot.source not in found:  # the model failed on this text alone
                metrics.DEAD_LETTERS.labels(name, "model_error").inc()
                value = encode_dead_letter("model_error", "the model failed on this event; see the worker log", slot.source, record.raw)
                out.append(Outgoing(self.pipeline.dead_letter, record.key, value, dead_letter=True))
                continue
            results, truncated, cached = found[slot.source]
            latency = now_ms - record.timestamp_ms if record.timestamp_ms else 0.0
            value = encode_output(slot, results, self.model, cached=cached, truncated=truncated, latency_ms=latency)
            key = record.key if record.key is not None else slot.id.encode("utf-8")
            out.append(Outgoing(self.pipeline.route_for(results), key, value))
        return out

    async def _results(self, events: list[InputEvent]) -> dict[Source, tuple[dict, bool, bool]]:
        """(results, truncated, cached) per event: from Redis where it has them, else from the model."""
        if not events:
            return {}
        name = self.pipeline.name
        keys = [cache_key(self.model_version, self.pipeline.tasks, e.text) for e in events]
        hits = await self.cache.get_many(keys)
        found: dict[Source, tuple[dict, bool, bool]] = {}
        misses: dict[str, list[InputEvent]] = {}  # one model call per distinct text
        for event, key, hit in zip(events, keys, hits):
            if hit is not None:
                found[event.source] = (hit["results"], hit["truncated"], True)
            else:
                misses.setdefault(key, []).append(event)
        metrics.CACHE_HITS.labels(name).inc(len(events) - sum(len(v) for v in misses.values()))
        metrics.CACHE_MISSES.labels(name).inc(sum(len(v) for v in misses.values()))
        if misses:
            texts = [group[0].text for group in misses.values()]
            started = time.perf_counter()
            predictions = await self._predict(texts)
            metrics.MODEL_SECONDS.labels(name).observe(time.perf_counter() - started)
            to_cache = {}
            for (key, group), prediction in zip(misses.items(), predictions):
                if prediction is None:
                    continue
                to_cache[key] = {"results": prediction.results, "truncated": prediction.truncated}
                for event in group:
                    found[event.source] = (prediction.results, prediction.truncated, False)
            await self.cache.set_many(to_cache)
        return found

    async def _predict(self, texts: list[str]) -> list[Prediction | None]:
        """The model never runs on the event loop: heartbeats and commits keep flowing.

        If a batch fails, each text is tried alone, so one poisonous event cannot stall the
        stream: it gets None (and a dead letter) while the others are classified.
        """
        loop = asyncio.get_running_loop()
        tasks = self.pipeline.tasks
        try:
            return list(await loop.run_in_executor(self.executor, self.classifier.predict, texts, tasks))
        except Exception as exc:  # noqa: BLE001
            log.error("model_failed", pipeline=self.pipeline.name, texts=len(texts), error=f"{type(exc).__name__}: {exc}")
            if len(texts) == 1:
                return [None]
        out: list[Prediction | None] = []
        for text in texts:
            out += await self._predict([text])
        return out
