"""kafka-python producer and consumer loops used by `produce`, `tail`, the demo and the tests."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator

from kafka import KafkaConsumer, KafkaProducer

from worker.config import Settings
from worker.connection import KafkaConnection


def as_event_bytes(line: str, fmt: str) -> bytes:
    """jsonl lines go as they are (malformed ones too: the worker dead-letters them)."""
    if fmt == "text" or (fmt == "auto" and not line.lstrip().startswith("{")):
        return json.dumps({"text": line}, ensure_ascii=False).encode("utf-8")
    return line.encode("utf-8")


def make_producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(acks="all", linger_ms=5, **KafkaConnection.from_settings(settings).kafka_python())


def produce_lines(settings: Settings, topic: str, lines: Iterable[str], fmt: str = "auto") -> int:
    producer = make_producer(settings)
    count = 0
    try:
        for line in lines:
            producer.send(topic, as_event_bytes(line, fmt))
            count += 1
        producer.flush()
    finally:
        producer.close()
    return count


def make_consumer(
    settings: Settings, topics: list[str], *, from_beginning: bool = True, group_id: str | None = None
) -> KafkaConsumer:
    return KafkaConsumer(
        *topics,
        group_id=group_id or f"bertstream-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        **KafkaConnection.from_settings(settings).kafka_python(),
    )


def tail_topic(
    settings: Settings, topic: str, *, from_beginning: bool = True, max_events: int = 0, idle_timeout_s: float = 0
) -> Iterator[bytes]:
    consumer = make_consumer(settings, [topic], from_beginning=from_beginning)
    seen = 0
    last = time.monotonic()
    try:
        while True:
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    yield record.value
                    seen += 1
                    last = time.monotonic()
                    if max_events and seen >= max_events:
                        return
            if idle_timeout_s and time.monotonic() - last > idle_timeout_s:
                return
    finally:
        consumer.close()
