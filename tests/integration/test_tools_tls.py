"""The tools reach a TLS-only broker with the settings' TLS: the bench's and the soak's clients
come from the same KafkaConnection as the worker's, so none of them drops TLS (or SASL)."""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from bertstream.bench.stream import _Collector
from bertstream.devservices.broker import EmbeddedBroker
from bertstream.devservices.stack import services
from bertstream.devservices.tls_front import TlsFiles
from bertstream.soak import Feeder, Reader
from worker.connection import ensure_topics

pytestmark = pytest.mark.integration


def test_bench_and_soak_clients_speak_tls_from_the_settings(
    tls_files: tuple[TlsFiles, Path], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls, _ = tls_files
    with EmbeddedBroker(tls=tls) as broker, ExitStack() as stack:
        # What a user of a TLS cluster sets; the tools read it through services().
        monkeypatch.setenv("BERTSTREAM_KAFKA_BROKERS", broker.bootstrap)
        monkeypatch.setenv("BERTSTREAM_REDIS_URL", redis_url)
        monkeypatch.setenv("BERTSTREAM_KAFKA_SECURITY_PROTOCOL", "SSL")
        monkeypatch.setenv("BERTSTREAM_KAFKA_SSL_CAFILE", str(tls.ca))
        kafka, _, embedded = services(stack)
        assert embedded == {"broker": False, "redis": False}
        assert kafka.uses_tls and kafka.kafka_python()["ssl_cafile"] == str(tls.ca)

        run = uuid.uuid4().hex[:8]
        topic, dead = f"tls-tools-{run}", f"tls-tools-{run}-dead"
        ensure_topics(kafka, [topic, dead], partitions=1, timeout_s=20)
        feeder = Feeder(kafka, topic, run, distinct=5, bad_every=0)  # the soak's producer
        try:
            feeder.send(10)
        finally:
            feeder.producer.close()
        reader = Reader(kafka, [topic, dead], dead)  # the soak's consumer (a group)
        reader.start()
        collector = _Collector(kafka, [topic], dead)  # the bench's consumer (assigned partitions)
        collector.start()
        try:
            arrived = collector.wait_for(feeder.good_ids, timeout_s=60)
            assert set(arrived) == set(feeder.good_ids)
            deadline = time.monotonic() + 60
            while reader.delivered() < 10 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert reader.ids == set(feeder.good_ids)
        finally:
            reader.stop.set()
            reader.join(timeout=10)
            collector.stop()
