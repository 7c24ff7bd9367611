"""Several producer processes for one burst: one kafka-python producer (pure Python) sent about
12,500 short events/s on the 2-core development machine, less than several worker processes on a
GPU can take.

Each child connects and fetches the topic's metadata first, says it is ready, and sends its share
only when the parent says go, so that the clock starts with every producer connected.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any


def _produce(kwargs: dict[str, Any], topic: str, values: list[bytes], go: Any, status: Any) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(acks="all", linger_ms=5, **kwargs)
    try:
        producer.partitions_for(topic)
        status.put("ready")
        go.wait()
        for value in values:
            producer.send(topic, value)
        producer.flush()
        status.put("done")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        status.put(f"error: {exc!r}")
    finally:
        producer.close()


def send_parallel(
    kafka_kwargs: dict[str, Any], topic: str, values: list[bytes], processes: int, timeout_s: float = 120
) -> tuple[float, float]:
    """Send `values` from `processes` child processes (round-robin shares) once all are connected.

    Returns (perf_counter when they were told to go, seconds until all had flushed)."""
    ctx = multiprocessing.get_context("spawn")  # the parent may hold torch threads: no fork
    go, status = ctx.Event(), ctx.Queue()
    children = [
        ctx.Process(target=_produce, args=(kafka_kwargs, topic, values[i::processes], go, status), daemon=True)
        for i in range(processes)
    ]
    for child in children:
        child.start()
    try:
        _expect(status, "ready", processes, timeout_s)
        started = time.perf_counter()
        go.set()
        _expect(status, "done", processes, timeout_s)
        return started, time.perf_counter() - started
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()


def _expect(status: Any, word: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(count):
        message = status.get(timeout=max(0.1, deadline - time.monotonic()))
        if message != word:
            raise RuntimeError(f"producer process: {message}")
