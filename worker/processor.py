"""One micro-batch of one pipeline: decode, look up the cache, classify the misses, build outputs.

Knows Redis (through ResultCache) but not Kafka: records come in, messages to send come out,
in input order, so that the caller can keep per-key order when it produces them.
"""
from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import structlog

from pipelines import Classifier, Prediction
from worker import metrics
from worker.cache import ResultCache, cache_key, id_key
from worker.codec import DecodeError, InputEvent, Source, decode, encode_dead_letter, encode_output
from worker.config import Pipeline

log = structlog.get_logger(__name__)

# The largest message (key + value) the worker produces: under the producer's max_request_size
# (set to 1 MiB in worker.app) and Kafka's default message.max.bytes (1,048,588). A bigger output
# would fail delivery on every retry and stall its partition, so it becomes a dead letter.
MAX_MESSAGE_BYTES = 1_000_000
MAX_KEY_BYTES = 65_536  # a dead letter drops a bigger record key (the source offset identifies it)
MIN_SPLIT_TEXTS = 8  # a batch is split across idle model instances into parts of at least this many texts

# Dead-letter codes the processor adds to the codec's DecodeError codes.
DUPLICATE_ID = "duplicate_id"  # an explicit id already claimed by another source record
OUTPUT_TOO_LARGE = "output_too_large"
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


@dataclass(frozen=True)
class LoadedModel:
    """One classifier with its version: a batch uses one snapshot, even across a hot reload."""

    classifier: Classifier
    version: str
    meta: dict[str, str]


class BatchProcessor:
    def __init__(
        self,
        pipeline: Pipeline,
        classifier: Classifier,
        cache: ResultCache,
        executor: Executor,
        max_event_bytes: int = 1_000_000,
        tokenizer_executor: Executor | None = None,
        model_free: asyncio.Semaphore | None = None,
    ) -> None:
        self.pipeline = pipeline
        # This pipeline's idle model instances behind `executor` (the worker's shared threads). The
        # caller holds one for each batch it passes to `process`; a batch may borrow the idle ones.
        self.model_free = model_free or asyncio.Semaphore(0)  # none to borrow
        self.cache = cache
        self.executor = executor
        self.tokenizer_executor = tokenizer_executor or executor
        self.max_event_bytes = max_event_bytes
        self.use(classifier)

    def use(self, classifier: Classifier) -> None:
        """Swap the model (hot reload); batches already started finish with the old one."""
        version = classifier.version(self.pipeline.tasks)
        self.loaded = LoadedModel(classifier, version, {"name": classifier.encoder.name, "version": version})

    @property
    def model_version(self) -> str:
        return self.loaded.version

    async def process(self, records: list[Record]) -> list[Outgoing]:
        """One Outgoing per record, in input order: an output or a dead letter. Never raises:
        an unexpected failure dead-letters the batch as internal_error (raw bytes kept)."""
        name = self.pipeline.name
        metrics.EVENTS_IN.labels(name).inc(len(records))
        metrics.BATCH_SIZE.labels(name).observe(len(records))
        try:
            return await self._process(records)
        except Exception as exc:  # noqa: BLE001 - nothing may stall or drop the batch
            log.exception("batch_failed", pipeline=name, events=len(records), error=f"{type(exc).__name__}: {exc}")
            detail = f"the worker failed on this batch ({type(exc).__name__}); see the worker log"
            return [self._dead_letter(INTERNAL_ERROR, detail, r) for r in records]

    def _dead_letter(self, code: str, detail: str, record: Record) -> Outgoing:
        metrics.DEAD_LETTERS.labels(self.pipeline.name, code).inc()
        key = record.key if record.key is None or len(record.key) <= MAX_KEY_BYTES else None
        value = encode_dead_letter(code, detail, record.source, record.raw)
        return Outgoing(self.pipeline.dead_letter, key, value, dead_letter=True)

    async def _process(self, records: list[Record]) -> list[Outgoing]:
        name = self.pipeline.name
        model = self.loaded
        slots: list[Outgoing | InputEvent] = []
        for record in records:
            try:
                slots.append(decode(record.raw, record.source, self.max_event_bytes))
            except DecodeError as err:
                log.warning("dead_letter", pipeline=name, error=err.code, detail=err.detail, **record.source.__dict__)
                slots.append(self._dead_letter(err.code, err.detail, record))
        by_source = {r.source: r for r in records}
        slots = await self._drop_duplicate_ids(slots, by_source)
        events = [s for s in slots if isinstance(s, InputEvent)]
        found = await self._results(events, model)
        out: list[Outgoing] = []
        now_ms = time.time() * 1000
        for slot in slots:
            if isinstance(slot, Outgoing):
                out.append(slot)
                continue
            record = by_source[slot.source]
            if slot.source not in found:  # the model failed on this text alone
                out.append(self._dead_letter(MODEL_ERROR, "the model failed on this event; see the worker log", record))
                continue
            results, truncated, cached = found[slot.source]
            latency = now_ms - record.timestamp_ms if record.timestamp_ms else 0.0
            value = encode_output(slot, results, model.meta, cached=cached, truncated=truncated, latency_ms=latency)
            key = record.key if record.key is not None else slot.id.encode("utf-8")
            if len(key) + len(value) > MAX_MESSAGE_BYTES:
                detail = f"the output would be {len(key) + len(value)} bytes, over the {MAX_MESSAGE_BYTES}-byte message limit"
                log.warning("dead_letter", pipeline=name, error=OUTPUT_TOO_LARGE, detail=detail, **slot.source.__dict__)
                out.append(self._dead_letter(OUTPUT_TOO_LARGE, detail, record))
                continue
            out.append(Outgoing(self.pipeline.route_for(results), key, value))
        return out

    async def _drop_duplicate_ids(
        self, slots: list[Outgoing | InputEvent], by_source: dict[Source, Record]
    ) -> list[Outgoing | InputEvent]:
        """An explicit id already claimed by another source record is a duplicate_id dead letter.

        The claim (Redis SET NX, TTL = the cache TTL) stores the source record that first carried
        the id, so a redelivery of that same record (at-least-once) is not a duplicate: it gets
        the same output again. Derived ids (topic:partition:offset) cannot collide and are not
        claimed. While Redis is down nothing is claimed: duplicates go through as outputs.
        """
        claims = [s for s in slots if isinstance(s, InputEvent) and s.id != s.source.derived_id()]
        if not claims:
            return slots
        keys = [id_key(self.pipeline.name, c.source.topic, c.id) for c in claims]
        owners = await self.cache.claim_ids(keys, [c.source.derived_id() for c in claims])
        duplicates = {c.source: owner for c, owner in zip(claims, owners) if owner is not None and owner != c.source.derived_id()}
        if not duplicates:
            return slots
        out: list[Outgoing | InputEvent] = []
        for slot in slots:
            if isinstance(slot, InputEvent) and slot.source in duplicates:
                detail = f"id {slot.id[:80]!r} was first used by record {duplicates[slot.source]}"
                log.warning("dead_letter", pipeline=self.pipeline.name, error=DUPLICATE_ID, detail=detail, **slot.source.__dict__)
                out.append(self._dead_letter(DUPLICATE_ID, detail, by_source[slot.source]))
            else:
                out.append(slot)
        return out

    async def _results(self, events: list[InputEvent], model: LoadedModel) -> dict[Source, tuple[dict, bool, bool]]:
        """(results, truncated, cached) per event: from Redis where it has them, else from the model."""
        if not events:
            return {}
        name = self.pipeline.name
        keys = [cache_key(model.version, self.pipeline.tasks, e.text) for e in events]
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
            predictions = await self._predict(texts, model.classifier)
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

    async def _predict(self, texts: list[str], classifier: Classifier) -> list[Prediction | None]:
        """A batch that finds other model instances idle is split across them, so that a light load
        gets the latency of small batches; under load every instance is busy and each batch takes
        one (the throughput of big batches)."""
        borrowed = 0
        while borrowed + 2 <= len(texts) // MIN_SPLIT_TEXTS and not self.model_free.locked():
            await self.model_free.acquire()  # free now: does not wait
            borrowed += 1
        if not borrowed:
            return await self._predict_on_one(texts, classifier)
        try:
            size = math.ceil(len(texts) / (borrowed + 1))
            chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
            results = await asyncio.gather(*(self._predict_on_one(chunk, classifier) for chunk in chunks))
        finally:
            for _ in range(borrowed):
                self.model_free.release()
        return [prediction for result in results for prediction in result]

    async def _predict_on_one(self, texts: list[str], classifier: Classifier) -> list[Prediction | None]:
        """The model never runs on the event loop: heartbeats and commits keep flowing.

        If a batch fails, each text is tried alone, so one poisonous event cannot stall the
        stream: it gets None (and a dead letter) while the others are classified.
        """
        loop = asyncio.get_running_loop()
        tasks = self.pipeline.tasks
        try:
            # Tokenize on its own thread (overlapping the model's work on the batch before), then
            # run the model on a model instance's thread.
            prepared = await loop.run_in_executor(self.tokenizer_executor, classifier.prepare, texts)
            return list(await loop.run_in_executor(self.executor, classifier.run, prepared, tasks))
        except Exception as exc:  # noqa: BLE001
            log.error("model_failed", pipeline=self.pipeline.name, texts=len(texts), error=f"{type(exc).__name__}: {exc}")
            if len(texts) == 1:
                return [None]
        out: list[Prediction | None] = []
        for text in texts:
            out += await self._predict_on_one([text], classifier)
        return out
