"""`bertstream predict --pipeline NAME`: one configured pipeline run offline, through the worker's
own batch processor (decoding, e-mail input, heads, dead letters), with no broker and no cache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from bertstream.feed import as_event_bytes
from worker.cache import ResultCache
from worker.codec import Source
from worker.config import Pipeline, Settings
from worker.logs import setup_logging
from worker.model import build_models
from worker.model_pool import ModelPool
from worker.processor import BatchProcessor, Record

SOURCE_TOPIC = "stdin"  # the `source.topic` of offline outputs; the offset is the line number


def predict_pipeline(
    settings: Settings, pipeline: Pipeline, lines: Iterator[str], batch_size: int, echo: Callable[[str], None]
) -> None:
    """Print one worker output event (or dead letter) per line, in input order. A line is an
    event in the worker's JSON contract when it starts with '{', else the text itself. Logs go
    to stderr, so that stdout holds the events alone."""
    setup_logging(settings.log_level, settings.log_format)
    model = build_models(settings, [pipeline])[pipeline.name]
    pool = ModelPool(model.instances, [pipeline.name])
    processor = BatchProcessor(pipeline, model, ResultCache(None, 0), pool, settings.max_event_bytes)

    async def run() -> None:
        batch: list[Record] = []
        for number, line in enumerate(lines):
            raw = as_event_bytes(line, "auto")
            batch.append(Record(raw=raw, key=None, source=Source(SOURCE_TOPIC, 0, number)))
            if len(batch) == batch_size:
                await flush(batch)
                batch = []
        if batch:
            await flush(batch)

    async def flush(batch: list[Record]) -> None:
        await pool.acquire(pipeline.name)  # as the worker's agent holds an instance per batch
        try:
            for out in await processor.process(batch):
                if out is not None:
                    echo(out.value.decode("utf-8"))
        finally:
            pool.release(pipeline.name)

    try:
        asyncio.run(run())
    finally:
        pool.shutdown()
