"""Model concurrency, in one place: the model instances, their threads, and batch splitting.

The model runs `instances` batches at once, each on its own thread (torch releases the GIL, so
the event loop stays free for heartbeats and commits), and tokenization runs on one more thread,
overlapping the model's work on the batch before. Each pipeline counts its own free instances:
its agent takes a batch only when one is free, so batches grow while the model is busy (big
batches under load, small ones when idle, as in Triton's dynamic batcher). Not one count for all
pipelines: an agent holds a slot while it waits for events, so an idle pipeline would keep an
instance from a busy one. A batch that finds instances idle borrows them and is split.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from pipelines.model import Model, Prediction
from worker import metrics

log = structlog.get_logger(__name__)

MIN_SPLIT_TEXTS = 8  # a batch is split across idle model instances into parts of at least this many texts
PROBE_TEXTS = ["warm-up"]  # a text every model answers: tells a poisonous batch from a broken model


class ModelUnavailable(RuntimeError):
    """The model fails on every text, a known-good one included: hold the batch, do not ack it."""


class ModelPool:
    def __init__(self, instances: int, pipelines: Iterable[str] = (), failure_limit: int = 3) -> None:
        self.instances = instances
        # Batches held in a row because the model failed: at `failure_limit` the worker is not ready.
        self.failure_limit = failure_limit
        self.failures = 0
        # Batches in flight per pipeline: one in the model per instance, one delivering.
        self.max_in_flight = instances + 1
        self.executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="model")
        self.tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        self.free = {name: asyncio.Semaphore(instances) for name in pipelines}

    def _free(self, pipeline: str) -> asyncio.Semaphore:
        if pipeline not in self.free:  # a pipeline not named at construction (tools, tests)
            self.free[pipeline] = asyncio.Semaphore(self.instances)
        return self.free[pipeline]

    async def acquire(self, pipeline: str) -> None:
        """Wait for one of the pipeline's instances; the caller releases it once its batch has run."""
        await self._free(pipeline).acquire()

    def release(self, pipeline: str) -> None:
        self._free(pipeline).release()

    @property
    def healthy(self) -> bool:
        return self.failures < self.failure_limit

    async def predict(self, pipeline: str, model: Model, texts: list[str], tasks: list[str]) -> list[Prediction | None]:
        """One Prediction per text, in order; None for a text the model failed on. Raises
        ModelUnavailable when it failed on every text and on a known-good one too.

        The caller holds one instance. A batch that finds others idle borrows them and is split,
        so a light load gets the latency of small batches; under load every instance is busy
        and each batch takes one (the throughput of big batches)."""
        free = self._free(pipeline)
        borrowed = 0
        while borrowed + 2 <= len(texts) // MIN_SPLIT_TEXTS and not free.locked():
            await free.acquire()  # free now: does not wait
            borrowed += 1
        if not borrowed:
            predictions = await self._run(pipeline, model, texts, tasks)
        else:
            try:
                size = math.ceil(len(texts) / (borrowed + 1))
                chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
                results = await asyncio.gather(*(self._run(pipeline, model, chunk, tasks) for chunk in chunks))
            finally:
                for _ in range(borrowed):
                    free.release()
            predictions = [prediction for result in results for prediction in result]
        if texts and all(p is None for p in predictions) and not await self._probe(pipeline, model, tasks):
            self.failures += 1
            metrics.MODEL_FAILING.set(0 if self.healthy else 1)
            raise ModelUnavailable(f"the model failed on all {len(texts)} texts and on a known-good one")
        self.failures = 0
        metrics.MODEL_FAILING.set(0)
        return predictions

    async def _probe(self, pipeline: str, model: Model, tasks: list[str]) -> bool:
        """Whether the model still answers a known-good text."""
        return (await self._run(pipeline, model, PROBE_TEXTS, tasks)) != [None]

    async def _run(self, pipeline: str, model: Model, texts: list[str], tasks: list[str]) -> list[Prediction | None]:
        """Tokenize on the tokenizer thread, then run on a model thread. If the batch fails, each
        text is tried alone, so one poisonous event cannot stall the stream: it gets None (and a
        dead letter) while the others are classified."""
        loop = asyncio.get_running_loop()
        try:
            prepared: Any = await loop.run_in_executor(self.tokenizer, model.prepare, texts)
            return list(await loop.run_in_executor(self.executor, model.run, prepared, tasks))
        except Exception as exc:  # noqa: BLE001 - one failing batch must not stop the stream
            log.error("model_failed", pipeline=pipeline, texts=len(texts), error=f"{type(exc).__name__}: {exc}")
            if len(texts) == 1:
                return [None]
        out: list[Prediction | None] = []
        for text in texts:
            out += await self._run(pipeline, model, [text], tasks)
        return out

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)
        self.tokenizer.shutdown(wait=True)
