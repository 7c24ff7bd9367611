"""The embedded services work for real: Kafka-protocol round trips through the broker fixture,
Redis round trips through the Redis fixture, password protection, broker restart."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from bertstream.devservices.broker import EmbeddedBroker
from bertstream.devservices.redis_server import EmbeddedRedis
from bertstream.devservices.tls_front import TlsFiles

pytestmark = pytest.mark.integration

# Group joins on tansu wait session_timeout/2: keep the session short.
CONSUMER_SETTINGS = dict(session_timeout_ms=6000, heartbeat_interval_ms=1000, auto_offset_reset="earliest")


def _create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, request_timeout_ms=10000)
    try:
        futures = [producer.send(topic, key=str(i).encode(), value=v) for i, v in enumerate(values)]
        producer.flush(timeout=15)
        for f in futures:
            f.get(timeout=15)  # raises if a send failed
    finally:
        producer.close(timeout=5)


def _consume(consumer: KafkaConsumer, count: int, timeout: float = 40.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(r.value for r in records)
    return got


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_kafka_produce_consume_round_trip(kafka_bootstrap: str, topic_name: Callable[..., str]) -> None:
    topic = topic_name("roundtrip")
    group = f"g-{uuid.uuid4().hex[:8]}"
    _create_topic(kafka_bootstrap, topic)
    values = [f"message {i} ✓".encode() for i in range(20)]
    _produce(kafka_bootstrap, topic, values)

    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False, **CONSUMER_SETTINGS
    )
    try:
        got = _consume(consumer, len(values))
        assert got == values  # one partition: all of them, in order
        consumer.commit()
        assert consumer.committed(TopicPartition(topic, 0)) == len(values)
    finally:
        consumer.close()

    # The group's committed offset is at the end: a new member of the same group reads nothing old.
    _produce(kafka_bootstrap, topic, [b"after commit"])
    again = KafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False, **CONSUMER_SETTINGS
    )
    try:
        assert _consume(again, 1) == [b"after commit"]
    finally:
        again.close()


def test_redis_set_get_ttl(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"bertstream:test:{uuid.uuid4().hex}"
    try:
        assert client.set(key, b"value", ex=60)
        assert client.get(key) == b"value"
        assert 0 < client.ttl(key) <= 60
        assert client.delete(key) == 1
        assert client.get(key) is None
    finally:
        client.delete(key)
        client.close()


def test_embedded_redis_password() -> None:
    password = "s3cret:/@pw"  # characters that must be escaped in the URL
    with EmbeddedRedis(password=password) as server:
        assert server.url == f"redis://:s3cret%3A%2F%40pw@127.0.0.1:{server.port}/0"
        anonymous = redis.Redis(host=server.host, port=server.port, retry=None)  # no retry backoff
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        wrong = redis.Redis(host=server.host, port=server.port, password="wrong", retry=None)
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
        wrong.close()
        for client in (
            redis.Redis(host=server.host, port=server.port, password=password),
            redis.Redis.from_url(server.url),
        ):
            assert client.ping()
            client.close()
        pid = server.pid
        assert pid is not None
    assert _gone(pid)


def test_embedded_redis_refuses_busy_port() -> None:
    with EmbeddedRedis() as first:
        with pytest.raises(RuntimeError, match="already in use"):
            EmbeddedRedis(port=first.port).start()


def test_embedded_broker_restart(topic_name: Callable[..., str]) -> None:
    with EmbeddedBroker() as broker:
        port, first_pid = broker.port, broker.pid
        assert first_pid is not None
        topic = topic_name("restart")
        _create_topic(broker.bootstrap, topic)
        _produce(broker.bootstrap, topic, [b"before"])

        broker.restart()
        assert broker.port == port and broker.bootstrap == f"127.0.0.1:{port}"
        assert broker.pid != first_pid and _gone(first_pid)

        # Memory storage: the topic is gone; create it again and use it.
        _create_topic(broker.bootstrap, topic)
        _produce(broker.bootstrap, topic, [b"after"])
        consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id="g-restart", **CONSUMER_SETTINGS)
        try:
            assert _consume(consumer, 1) == [b"after"]
        finally:
            consumer.close()
        last_pid = broker.pid
    assert last_pid is not None and _gone(last_pid)
    assert not broker.running()


def test_embedded_broker_tls_front_lives_with_the_broker(tls_files: tuple[TlsFiles, Path]) -> None:
    """With TLS: only TLS clients get through; a restart keeps the front (and its port); stop ends both."""
    tls, _ = tls_files
    broker = EmbeddedBroker(tls=tls)
    with broker:
        assert (
            broker.front is not None
            and broker.bootstrap == f"127.0.0.1:{broker.front.port}" != f"127.0.0.1:{broker.port}"
        )
        front_pid = broker.front.pid
        for round_ in ("before", "after"):
            producer = KafkaProducer(**broker.connection().kafka_python(), acks="all", request_timeout_ms=10000)
            try:
                producer.send(f"tls-{uuid.uuid4().hex[:8]}", b"x").get(timeout=15)
            finally:
                producer.close(timeout=5)
            if round_ == "before":
                broker.restart()
        assert broker.front.pid == front_pid
    assert front_pid is not None and _gone(front_pid) and not broker.front.running()
