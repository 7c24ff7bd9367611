"""A harness for fault tests: real worker processes, real broker, real Redis, nothing mocked.

- `FaultRun`: one run's unique topics, group and a LIGHT pipelines file (heads spam + sentiment);
  starts worker processes (`bertstream.devservices.worker_process`), produces keyed events with ids, kills workers.
- `Collector`: a background consumer of the output and dead-letter topics, by id, in order.
- `Figures`: what a fault test reports (events, duplicates, losses, recovery times).

Cheap to import (no torch). Used by tests/integration/test_faults_quick.py and tests/faults/.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from bertstream.devservices.process import free_port, stop_process_group
from bertstream.devservices.stack import worker_env
from bertstream.devservices.worker_process import start_worker_process, wait_ready
from worker.config import load_settings
from worker.connection import KafkaConnection, ensure_topics

LIGHT_HEADS = ["spam", "sentiment"]
PRODUCER_MAX_BYTES = 32 << 20  # the test producer may send 10 MB events (tansu accepts them)

from bertstream.soak import TEXTS


def text_for(run: str, i: int, distinct: int) -> str:
    """Short texts; `distinct` of them per run (the rest are cache hits)."""
    j = i % distinct
    return f"{TEXTS[j % len(TEXTS)]} ({run} {j})"


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def metric(self, name: str, labels: str = "") -> float | None:
        """A sample's value from /metrics, e.g. metric("bertstream_redis_degraded")."""
        try:
            body = self.metrics()
        except OSError:
            return None
        pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.M)
        found = pattern.findall(body)
        return sum(float(v) for v in found) if found else None

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """Parsed JSON log lines whose "event" is `event`."""
        out = []
        for line in self.log_text().splitlines():
            if f'"{event}"' not in line:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == event:
                out.append(doc)
        return out


class FaultRun:
    """One fault scenario: its own topics and consumer group, and the worker processes it started."""

    def __init__(
        self,
        bootstrap: str,
        redis_url: str,
        tmp: Path,
        *,
        partitions: int = 2,
        heads: list[str] | None = None,
        batch_size: int = 32,
        env: dict[str, str] | None = None,
        prefix: str = "fault",
        kafka: dict[str, str] | None = None,
    ) -> None:
        """`kafka`: more Kafka settings (e.g. kafka_security_protocol), for the worker and the test's clients."""
        self.bootstrap = bootstrap
        self.kafka = kafka or {}
        self.settings = load_settings(kafka_brokers=bootstrap, kafka_partitions=partitions, **self.kafka)
        self.conn = KafkaConnection.from_settings(self.settings)
        self.client = self.conn.kafka_python()
        self.redis_url = redis_url
        self.tmp = tmp
        self.partitions = partitions
        self.run = uuid.uuid4().hex[:8]
        self.pipeline = "faults"
        self.topics = {k: f"{prefix}-{self.run}-{k}" for k in ("in", "out", "dead")}
        self.group = f"{prefix}-{self.run}"
        self.heads = heads or LIGHT_HEADS
        self.pipelines_file = tmp / f"pipelines-{self.run}.toml"
        self.pipelines_file.write_text(
            f'[pipelines.{self.pipeline}]\ninput = "{self.topics["in"]}"\noutput = "{self.topics["out"]}"\n'
            f'dead_letter = "{self.topics["dead"]}"\nheads = {json.dumps(self.heads)}\n'
        )
        self.extra_env = {"BERTSTREAM_BATCH_SIZE": str(batch_size), **(env or {})}
        self.workers: list[WorkerProc] = []
        self._producer: KafkaProducer | None = None
        self.create_topics()

    # -- topics and events -----------------------------------------------------------------------
    def create_topics(self) -> None:
        """Create the run's topics (again, after a broker restart that lost them)."""
        ensure_topics(self.conn, list(self.topics.values()), self.settings.kafka_partitions, timeout_s=30)

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(
                **self.client, acks="all", linger_ms=5, max_request_size=PRODUCER_MAX_BYTES, request_timeout_ms=30000
            )
        return self._producer

    def reset_producer(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None

    def event(self, i: int, *, distinct: int = 200, tag: str = "e") -> tuple[str, bytes]:
        event_id = f"{self.run}-{tag}-{i}"
        return event_id, json.dumps(
            {"id": event_id, "text": text_for(self.run, i, distinct), "metadata": {"i": i}}
        ).encode()

    def produce(
        self, values: Iterable[bytes], keys: Iterable[bytes | None] | None = None, partition: int | None = None
    ) -> list[tuple[int, int]]:
        """Send and wait for every ack; [(partition, offset)] in order."""
        values = list(values)
        keys = list(keys) if keys is not None else [None] * len(values)
        futures = [
            self.producer.send(self.topics["in"], value=v, key=k, partition=partition) for v, k in zip(values, keys)
        ]
        self.producer.flush(timeout=60)
        return [(m.partition, m.offset) for m in (f.get(timeout=60) for f in futures)]

    def produce_stream(
        self, n: int, rate: float, *, distinct: int = 200, tag: str = "e", start: int = 0, keys: int = 16
    ) -> list[str]:
        """n events at about `rate` per second, keyed (`keys` keys), in chunks; returns the ids."""
        ids = []
        chunk = max(1, int(rate / 10))
        t0 = time.monotonic()
        for lo in range(start, start + n, chunk):
            hi = min(lo + chunk, start + n)
            batch = [self.event(i, distinct=distinct, tag=tag) for i in range(lo, hi)]
            futures = [
                self.producer.send(self.topics["in"], value=v, key=f"k{i % keys}".encode())
                for i, (_, v) in zip(range(lo, hi), batch)
            ]
            ids += [eid for eid, _ in batch]
            self.producer.flush(timeout=60)
            for f in futures:
                f.get(timeout=60)
            ahead = (hi - start) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        return ids

    # -- workers -------------------------------------------------------------------------------------
    def env(self, port: int, **extra: str) -> dict[str, str]:
        env = worker_env(
            self.bootstrap,
            self.redis_url,
            self.group,
            port,
            pipelines_file=str(self.pipelines_file),
            session_timeout_s="6",
            kafka_partitions=str(self.partitions),
            threads="1",
        )
        env.update({f"BERTSTREAM_{k.upper()}": str(v) for k, v in self.kafka.items()})
        env.update(self.extra_env)
        env.update({k if k.startswith("BERTSTREAM_") else f"BERTSTREAM_{k.upper()}": str(v) for k, v in extra.items()})
        return env

    def start_worker(
        self, name: str | None = None, *, wait: bool = True, timeout_s: float = 300, **extra: str
    ) -> WorkerProc:
        name = name or f"w{len(self.workers) + 1}"
        port = free_port()
        log = self.tmp / f"{self.run}-{name}.log"
        proc = start_worker_process(self.env(port, **extra), [self.pipeline], log)
        worker = WorkerProc(name, proc, port, log)
        self.workers.append(worker)
        if wait:
            wait_ready(proc, port, log, timeout_s=timeout_s)
        return worker

    @staticmethod
    def kill(worker: WorkerProc, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the worker's process group (SIGKILL: no goodbye)."""
        try:
            os.killpg(worker.proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            worker.proc.wait(timeout=30)

    def stop_all(self) -> None:
        for worker in self.workers:
            stop_process_group(worker.proc, 30)
        self.reset_producer()


@dataclass
class Collector:
    """Reads the output and dead-letter topics from the beginning in a background thread."""

    bootstrap: str
    topics: list[str]
    dead_topic: str
    client: dict[str, Any] = field(default_factory=dict)  # kafka-python security settings
    outputs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead: list[dict[str, Any]] = field(default_factory=list)
    order: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    total: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="collector")
        self._thread.start()

    def _consumer(self) -> KafkaConsumer:
        return KafkaConsumer(
            *self.topics,
            **{"bootstrap_servers": self.bootstrap, **self.client},
            group_id=f"collector-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=32 << 20,
            enable_auto_commit=False,
        )

    def _loop(self) -> None:
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                for tp, records in consumer.poll(timeout_ms=300).items():
                    with self._lock:
                        for r in records:
                            doc = json.loads(r.value)
                            self.total += 1
                            if tp.topic == self.dead_topic:
                                self.dead.append(doc)
                            else:
                                self.outputs[doc["id"]].append(doc)
                                self.order[(tp.topic, tp.partition)].append({"key": r.key, **doc})
            except Exception:  # noqa: BLE001 - a broker restart: reconnect
                if consumer is not None:
                    try:
                        consumer.close(autocommit=False)
                    except Exception:  # noqa: BLE001
                        pass
                consumer = None
                time.sleep(1)
        if consumer is not None:
            consumer.close(autocommit=False)

    def restart(self) -> None:
        """Read again from the beginning (after a broker restart: the old positions are gone)."""
        self.close()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="collector")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def seen(self, ids: Iterable[str]) -> set[str]:
        with self._lock:
            return {i for i in ids if i in self.outputs}

    def dead_by_offset(self) -> dict[tuple[int, int], dict[str, Any]]:
        with self._lock:
            return {(d["source"]["partition"], d["source"]["offset"]): d for d in self.dead}

    def wait_for(self, ids: Iterable[str], timeout_s: float, dead: int = 0) -> float:
        """Until every id has an output (and `dead` dead letters arrived); seconds waited."""
        want = set(ids)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            with self._lock:
                if want <= self.outputs.keys() and len(self.dead) >= dead:
                    return time.monotonic() - t0
            time.sleep(0.25)
        return time.monotonic() - t0

    def missing(self, ids: Iterable[str]) -> list[str]:
        with self._lock:
            return [i for i in ids if i not in self.outputs]

    def duplicates(self, ids: Iterable[str]) -> int:
        """Outputs beyond the first, over `ids`."""
        with self._lock:
            return sum(max(0, len(self.outputs.get(i, [])) - 1) for i in ids)

    def check_stable_redeliveries(self) -> None:
        """Every repeated output of an id is the same event: same source and results."""
        with self._lock:
            for event_id, docs in self.outputs.items():
                first = docs[0]
                for doc in docs[1:]:
                    assert doc["source"] == first["source"], f"{event_id}: {doc['source']} != {first['source']}"
                    assert doc["results"] == first["results"], event_id

    def check_key_order(self, seq_of: dict[str, int]) -> int:
        """Per output partition and key, first occurrences of ids come in input order; returns keys checked."""
        checked = 0
        with self._lock:
            for docs in self.order.values():
                by_key: dict[bytes, list[int]] = defaultdict(list)
                seen: set[str] = set()
                for doc in docs:
                    if doc["id"] in seq_of and doc["id"] not in seen:
                        seen.add(doc["id"])
                        by_key[doc["key"]].append(seq_of[doc["id"]])
                for key, seqs in by_key.items():
                    assert seqs == sorted(seqs), f"key {key!r} out of order: {seqs[:20]}"
                    checked += 1
        return checked


@dataclass
class Figures:
    """What a fault test reports; printed (pytest -s) and appended to reports/faults.jsonl."""

    test: str
    values: dict[str, Any] = field(default_factory=dict)

    def add(self, **values: Any) -> None:
        self.values.update(values)

    def emit(self) -> None:
        line = json.dumps({"test": self.test, **self.values}, default=str)
        print(f"\nFIGURES {line}")
        out = Path(os.environ.get("BERTSTREAM_FAULTS_REPORT", "reports/faults.jsonl"))
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as fh:
                fh.write(line + "\n")
        except OSError:
            pass


def wait_until(predicate: Any, timeout_s: float, tick: float = 0.25) -> float | None:
    """Seconds until predicate() is true, or None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        time.sleep(tick)
    return None
