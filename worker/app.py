"""The Faust app: one agent per pipeline, micro-batches with noack_take, acks after delivery."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import faust
import redis.asyncio as aioredis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipelines.model import Model
from worker import metrics
from worker.cache import ResultCache
from worker.codec import Source
from worker.config import Pipeline, Settings
from worker.connection import KafkaConnection
from worker.faust_transport import Transport
from worker.limits import PRODUCER_MAX_REQUEST_BYTES
from worker.model import ModelSet
from worker.model_pool import ModelPool, ModelUnavailable
from worker.processor import BatchProcessor, Outgoing, Record
from worker.reload import ModelReloader

log = structlog.get_logger(__name__)

SEND_RETRY_S = 1.0
MODEL_RETRY_S = 5.0  # a batch held while the model fails is tried again this often
PRODUCER_REQUEST_TIMEOUT_S = 30.0  # a delivery that hangs this long fails and the batch is sent again
EXIT_SHUTDOWN_TIMEOUT = 3  # exit code when batches in flight could not be delivered within the grace period


class App(faust.App):
    """faust.App with a bounded stop: past `shutdown_grace_s` the process exits without acking.

    Faust's stop waits for every taken event to be acked, and delivery is retried forever, so a
    broker that is down would hold a SIGTERM forever. What was not acked is redelivered later.
    """

    shutdown_grace_s: float = 30.0
    fetch_max_wait_s: float = 0.05

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        grace = self.shutdown_grace_s

        def force_exit() -> None:
            log.error("shutdown_timeout", grace_s=grace, effect="exiting; unacked events will be redelivered")
            logging_flush()
            os._exit(EXIT_SHUTDOWN_TIMEOUT)

        timer = threading.Timer(grace, force_exit)
        timer.daemon = True
        timer.start()
        log.info("worker_stopping", grace_s=grace)
        await super().on_stop()


def logging_flush() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001
            pass


def buffered_events(settings: Settings) -> int:
    """Faust's buffer counts events: as many as fit BERTSTREAM_BUFFER_BYTES at the largest event
    size, at least 4 batches (fewer starve the model), at most Faust's default of 4096."""
    return max(4 * settings.batch_size, min(4096, settings.buffer_bytes // settings.max_event_bytes))


async def _outcome(handed: Any) -> BaseException | None:
    """None once a handed-over message is delivered, else why it was not."""
    if isinstance(handed, BaseException):
        return handed
    try:
        await handed
    except Exception as exc:  # noqa: BLE001 - any delivery failure: sent again
        return exc
    return None


def _on_redis_degraded(degraded: bool, reason: str) -> None:
    metrics.REDIS_DEGRADED.set(1 if degraded else 0)
    if degraded:
        log.warning("redis_degraded", reason=reason, effect="classifying without the cache")
    else:
        log.info("redis_recovered")


class WorkerApp:
    """Builds the Faust app around a loaded model; `app` is what a faust.Worker runs."""

    def __init__(
        self,
        settings: Settings,
        pipelines: list[Pipeline],
        model: Model | ModelSet,
        reloader: Callable[[Callable[[ModelSet], None]], ModelReloader] | None = None,
    ) -> None:
        self.settings = settings
        self.pipelines = pipelines
        self.model = model if isinstance(model, ModelSet) else ModelSet.shared(model, pipelines)
        model = self.model
        self.processors: list[BatchProcessor] = []
        self._pipeline_by_input = {p.input: p.name for p in pipelines}
        self._processed: dict[tuple[str, int], int] = {}  # next offset after the last acked, per input partition
        self._lag_labels: set[tuple[str, str, str]] = set()
        self._joined = False
        self.pool = ModelPool(model.instances, [p.name for p in pipelines], settings.model_failure_limit)
        client = (
            aioredis.from_url(
                settings.redis_url.get_secret_value(),
                socket_timeout=2,
                socket_connect_timeout=2,
                health_check_interval=10,
            )
            if settings.cache_ttl_s > 0
            else None
        )
        self.cache = ResultCache(client, settings.cache_ttl_s, _on_redis_degraded)
        kafka = KafkaConnection.from_settings(settings)
        self.app = App(
            settings.group_id,
            # Faust reads unprefixed env vars (WEB_BIND, PRODUCER_ACKS, BROKER_URL, ...) over these
            # kwargs; an empty environment keeps BERTSTREAM_* the only source of settings.
            env={},
            broker=kafka.faust_broker(),
            broker_credentials=kafka.faust_credentials(),
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=settings.heartbeat_s,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            producer_max_request_size=PRODUCER_MAX_REQUEST_BYTES,
            producer_request_timeout=PRODUCER_REQUEST_TIMEOUT_S,
            topic_allow_declare=False,
            # Bounded memory: events buffered per stream within BERTSTREAM_BUFFER_BYTES (at the largest
            # event size), one event's size per partition fetch. Faust's default is 4096 events.
            stream_buffer_maxsize=buffered_events(settings),
            consumer_max_fetch_size=settings.max_event_bytes + 65_536,
            topic_disable_leader=True,
            web_enabled=settings.web_port > 0,
            web_bind=settings.web_host,
            web_host=settings.web_host,
            web_port=settings.web_port or 6066,  # unused when the web server is disabled (0)
        )
        self.app.shutdown_grace_s = settings.shutdown_grace_s
        self.app.fetch_max_wait_s = settings.fetch_max_wait_s
        for pipeline in pipelines:
            self._add_agent(pipeline)
        self._add_views()

        @self.app.on_partitions_assigned.connect
        async def joined(sender: Any, assigned: Any, **kwargs: Any) -> None:
            self._joined = True

        @self.app.on_partitions_revoked.connect
        async def revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
            self.forget_partitions(revoked)

        self.reloader = reloader(self.use) if reloader else None
        self._add_timers()
        metrics.MODEL_INFO.info({"name": model.name, "version": model.version()})

    def use(self, model: Model | ModelSet) -> None:
        """Swap in new, warm models: batches already started finish with the old ones."""
        self.model = model if isinstance(model, ModelSet) else ModelSet.shared(model, self.pipelines)
        for processor in self.processors:
            processor.use(self.model[processor.pipeline.name])
        metrics.MODEL_INFO.info({"name": self.model.name, "version": self.model.version()})

    def _add_timers(self) -> None:
        @self.app.timer(interval=self.settings.lag_interval_s)
        async def consumer_lag() -> None:
            await self.update_lag()

        if self.reloader is None:
            return
        reloader = self.reloader

        @self.app.task
        async def reload_on_sighup() -> None:
            reloader.install_signal(asyncio.get_running_loop())

        if self.settings.reload_check_s > 0:

            @self.app.timer(interval=self.settings.reload_check_s)
            async def reload_on_change() -> None:
                await reloader.check_files()

    def forget_partitions(self, partitions: Any) -> None:
        """Drop what was processed on partitions this worker gave up: a later assignment starts
        from the committed offset, not from this worker's old count."""
        for tp in partitions:
            self._processed.pop((tp.topic, tp.partition), None)

    async def update_lag(self) -> None:
        """Lag per assigned input partition: the fetch high watermark minus the next offset to process.

        The high watermark comes from fetch responses (exact on every broker; the embedded one's
        ListOffsets "latest" is not)."""
        consumer = self.app.consumer
        seen: set[tuple[str, str, str]] = set()
        for tp in consumer.assignment():
            pipeline = self._pipeline_by_input.get(tp.topic)
            highwater = consumer.highwater(tp) if pipeline else None
            if highwater is None:
                continue
            done = self._processed.get((tp.topic, tp.partition))
            if done is None:
                done = await consumer.position(tp)
            if done is None:
                continue
            labels = (pipeline, tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(max(0, highwater - done))
            seen.add(labels)
        for labels in self._lag_labels - seen:  # partitions revoked in a rebalance
            metrics.CONSUMER_LAG.remove(*labels)
        self._lag_labels = seen

    def _topic(self, name: str) -> faust.TopicT:
        return self.app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def _add_agent(self, pipeline: Pipeline) -> None:
        processor = BatchProcessor(
            pipeline, self.model[pipeline.name], self.cache, self.pool, self.settings.max_event_bytes
        )
        self.processors.append(processor)
        settings, pool, name = self.settings, self.pool, pipeline.name

        async def agent(stream: faust.StreamT) -> None:
            in_flight: deque[asyncio.Task[None]] = deque()
            previous: asyncio.Event | None = None
            try:
                await pool.acquire(name)
                async for events in stream.noack_take(settings.batch_size, within=settings.batch_window_s):
                    delivered = asyncio.Event()
                    in_flight.append(
                        asyncio.ensure_future(
                            self._handle(stream, processor, events, previous, delivered, lambda: pool.release(name))
                        )
                    )
                    previous = delivered
                    # The next batch is taken only once a model instance is free, so it grows while
                    # they are busy (big batches under load, small ones when idle), and while
                    # max_in_flight batches are undelivered. Meanwhile Faust's buffer fills and the
                    # consumer pauses (backpressure). A stop never cancels a batch: the task
                    # leaves the deque only once done, so `finally` still waits for it.
                    await pool.acquire(name)
                    while in_flight and (in_flight[0].done() or len(in_flight) >= pool.max_in_flight):
                        await asyncio.shield(in_flight[0])
                        in_flight.popleft()
            finally:
                pending = [t for t in in_flight if not t.done()]
                if pending:
                    await asyncio.wait(pending, timeout=settings.shutdown_grace_s)

        agent.__name__ = f"pipeline_{pipeline.name}"
        self.app.agent(self._topic(pipeline.input), name=f"bertstream.{pipeline.name}")(agent)

    async def _handle(
        self,
        stream: faust.StreamT,
        processor: BatchProcessor,
        events: list[faust.EventT],
        previous: asyncio.Event | None,
        delivered: asyncio.Event,
        classified: Callable[[], None],
    ) -> None:
        """One batch: classify (while the previous batch delivers; `classified` frees its model
        instance), deliver once the previous batch is delivered (per-key order, retries
        included), then ack."""
        name = processor.pipeline.name
        started = time.perf_counter()
        records = [
            Record(
                raw=e.message.value,
                key=e.message.key,
                source=Source(e.message.topic, e.message.partition, e.message.offset),
                timestamp_ms=e.message.timestamp * 1000 if e.message.timestamp else None,
            )
            for e in events
        ]
        try:
            try:
                outgoing = await self._classify(processor, records)
            finally:
                classified()
            if previous is not None:
                await previous.wait()
            to_send = [o for o in outgoing if o is not None]  # None: delivered before a redelivery
            await self._deliver(name, to_send)
            await processor.settle(to_send)
        finally:
            delivered.set()
        # Ack only after every output of the batch is confirmed by the broker.
        for event in events:
            await stream.ack(event)
        for record in records:
            tp = (record.source.topic, record.source.partition)
            self._processed[tp] = max(self._processed.get(tp, 0), record.source.offset + 1)
        now_ms = time.time() * 1000
        for record in records:
            if record.timestamp_ms:
                metrics.E2E_SECONDS.labels(name).observe(max(0.0, now_ms - record.timestamp_ms) / 1000)
        metrics.BATCH_SECONDS.labels(name).observe(time.perf_counter() - started)

    async def _classify(self, processor: BatchProcessor, records: list[Record]) -> list[Outgoing | None]:
        """The batch's outputs. While the model fails on everything the batch is held, neither
        dead-lettered nor acked, and tried again: the agent stops taking events meanwhile."""
        while True:
            try:
                return await processor.process(records)
            except ModelUnavailable as exc:
                log.error(
                    "model_unavailable",
                    pipeline=processor.pipeline.name,
                    error=str(exc),
                    effect="holding the batch, not acking it",
                    retry_in_s=MODEL_RETRY_S,
                )
                await asyncio.sleep(MODEL_RETRY_S)

    async def _send(self, message: Outgoing) -> Any:
        """Hand one message to the producer; the returned future resolves on delivery."""
        return await self.app.producer.send(
            message.topic, message.key, message.value, partition=None, timestamp=None, headers=None
        )

    async def _deliver(self, pipeline: str, outgoing: list[Outgoing]) -> None:
        """Produce the batch (pipelined, in order) and wait until the broker confirmed every
        message; the ones that failed, and only those, are sent again. Nothing is acked before
        this returns."""
        pending = outgoing
        while pending:
            handed: list[Any] = []
            for message in pending:
                try:
                    handed.append(await self._send(message))
                except Exception as exc:  # noqa: BLE001 - not handed over: sent again below
                    handed.append(exc)
            results = await asyncio.gather(*(_outcome(h) for h in handed))
            for message, error in zip(pending, results):
                if error is None and not message.dead_letter:
                    metrics.EVENTS_OUT.labels(pipeline, message.topic).inc()
            failed = [(m, e) for m, e in zip(pending, results) if e is not None]
            if failed:
                error = failed[0][1]
                log.warning(
                    "delivery_failed",
                    pipeline=pipeline,
                    failed=len(failed),
                    of=len(pending),
                    error=f"{type(error).__name__}: {error}",
                    retry_in_s=SEND_RETRY_S,
                )
                await asyncio.sleep(SEND_RETRY_S)
            pending = [m for m, _ in failed]

    def _add_views(self) -> None:
        @self.app.page("/healthz")
        async def healthz(web: Any, request: Any) -> Any:
            return web.json({"status": "ok"})

        @self.app.page("/readyz")
        async def readyz(web: Any, request: Any) -> Any:
            redis_ok = await self.cache.ping() if self.cache.client is not None else True
            checks = {
                "model": self.pool.healthy,
                # Joined the consumer group at least once and not rebalancing now (a worker of a
                # group with more members than partitions may hold no partition and is still ready).
                "broker": self._joined and not self.app.rebalancing,
                "redis": redis_ok,
            }
            ready = all(checks.values())
            return web.json(
                {"ready": ready, "checks": checks, "model": self.model.version(), "models": self.model.versions()},
                status=200 if ready else 503,
            )

        @self.app.page("/metrics")
        async def prometheus(web: Any, request: Any) -> Any:
            # aiohttp refuses a charset inside content_type: the exposition format is plain ASCII text.
            return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
