"""`bertstream status` against the real broker fixture: lag is the high watermark minus the group's
committed offsets, per partition; metrics come from a real /metrics page."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from click.testing import CliRunner
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, generate_latest

from bertstream.cli.status import high_watermarks, render, status, status_rows
from worker.config import Pipeline, Settings

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def _produce(bootstrap: str, topic: str, per_partition: dict[int, int], batched: bool = True) -> None:
    """Batched sends put many records in one batch: the case where ListOffsets "latest" is wrong on tansu."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=50 if batched else 0, request_timeout_ms=10000
    )
    try:
        futures = [
            producer.send(topic, value=f"{p}-{i}".encode(), partition=p)
            for p, n in per_partition.items()
            for i in range(n)
        ]
        producer.flush(timeout=15)
        for f in futures:
            f.get(timeout=15)
    finally:
        producer.close()


def _commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    try:
        consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
    finally:
        consumer.close()


def _pipeline(name: str, topic: str) -> Pipeline:
    return Pipeline(name=name, input=topic, output=f"{topic}.out", dead_letter=f"{topic}.dlq", heads=["sentiment"])


@pytest.fixture
def metrics_server() -> Iterator[Callable[[CollectorRegistry], str]]:
    """Serves a registry's exposition text on a loopback port, like a worker's /metrics."""
    servers: list[HTTPServer] = []

    def start(registry: CollectorRegistry) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/metrics"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_lag_is_high_watermark_minus_committed(kafka_bootstrap: str, topic_name: Callable[..., str]) -> None:
    topic = topic_name("status-in")
    group = f"status-{uuid.uuid4().hex[:8]}"
    _create_topic(kafka_bootstrap, topic)
    produced = {0: 30, 1: 12, 2: 5, 3: 0}
    _produce(kafka_bootstrap, topic, produced)
    committed = {0: 10, 1: 12, 2: 1}  # partition 3: nothing committed, and empty
    _commit(kafka_bootstrap, group, topic, committed)

    settings = Settings(kafka_brokers=kafka_bootstrap, group_id=group)
    rows = status_rows(settings, [_pipeline("p", topic)], [], interval_s=0)

    n, m = sum(produced.values()), sum(committed.values())
    assert rows[0]["lag"] == n - m == 24
    assert rows[0]["lag_by_partition"] == {0: 20, 1: 0, 2: 4, 3: 0}
    assert rows[0]["partitions"] == PARTITIONS
    assert rows[0]["throughput_per_s"] is None and rows[0]["events_in"] is None


def test_uncommitted_group_lags_by_everything_and_high_watermark_is_exact(
    kafka_bootstrap: str, topic_name: Callable[..., str]
) -> None:
    topic = topic_name("status-new")
    _create_topic(kafka_bootstrap, topic, partitions=2)
    _produce(kafka_bootstrap, topic, {0: 17, 1: 9})
    _produce(kafka_bootstrap, topic, {1: 3}, batched=False)

    settings = Settings(kafka_brokers=kafka_bootstrap, group_id=f"never-{uuid.uuid4().hex[:8]}")
    assert high_watermarks(settings, [topic]) == {topic: {0: (0, 17), 1: (0, 12)}}
    rows = status_rows(settings, [_pipeline("p", topic)], [])
    assert rows[0]["lag"] == 29


def test_missing_topic_is_reported_not_raised(kafka_bootstrap: str, topic_name: Callable[..., str]) -> None:
    settings = Settings(kafka_brokers=kafka_bootstrap, group_id="nobody")
    rows = status_rows(settings, [_pipeline("ghost", topic_name("absent"))], [])
    assert rows[0]["lag"] is None and rows[0]["partitions"] == 0
    assert "does not exist yet" in render(rows)


def test_metrics_from_two_workers_are_summed(
    kafka_bootstrap: str, topic_name: Callable[..., str], metrics_server: Callable[[CollectorRegistry], str]
) -> None:
    topic = topic_name("status-m")
    _create_topic(kafka_bootstrap, topic, partitions=1)
    urls = []
    for events, hits, misses, dead in ((40, 30, 10, 2), (60, 10, 50, 1)):
        registry = CollectorRegistry()
        Counter("bertstream_events_in_total", "", ["pipeline"], registry=registry).labels("p").inc(events)
        Counter("bertstream_cache_hits_total", "", ["pipeline"], registry=registry).labels("p").inc(hits)
        Counter("bertstream_cache_misses_total", "", ["pipeline"], registry=registry).labels("p").inc(misses)
        Counter("bertstream_dead_letters_total", "", ["pipeline", "error"], registry=registry).labels(
            "p", "invalid_json"
        ).inc(dead)
        Counter("bertstream_events_in_total_other", "", ["pipeline"], registry=registry).labels("q").inc(7)
        urls.append(metrics_server(registry))
    urls.append("http://127.0.0.1:9/metrics")  # a worker that is down

    settings = Settings(kafka_brokers=kafka_bootstrap, group_id="g")
    [row] = status_rows(settings, [_pipeline("p", topic)], urls, interval_s=0)
    assert row["events_in"] == 100
    assert row["cache_hit_rate"] == pytest.approx(40 / 100)
    assert row["dead_letters"] == 3
    assert row["workers"] == 2 and len(row["errors"]) == 1

    table = render([row])
    assert table.splitlines()[0].split()[:4] == ["PIPELINE", "INPUT", "PARTS", "LAG"]
    assert "40.0%" in table and "metrics from 2 worker(s)" in table and "unreachable: http://127.0.0.1:9" in table


def test_status_command_prints_the_table(kafka_bootstrap: str, topic_name: Callable[..., str], tmp_path) -> None:
    topic = topic_name("status-cli")
    _create_topic(kafka_bootstrap, topic, partitions=2)
    _produce(kafka_bootstrap, topic, {0: 4, 1: 2})
    pipelines = tmp_path / "pipelines.toml"
    pipelines.write_text(
        f'[pipelines.mine]\ninput = "{topic}"\noutput = "o"\ndead_letter = "d"\nheads = ["sentiment"]\n'
    )

    result = CliRunner().invoke(
        status,
        [
            "--brokers",
            kafka_bootstrap,
            "--group-id",
            f"g-{uuid.uuid4().hex[:6]}",
            "--pipelines-file",
            str(pipelines),
            "--interval",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    data_line = result.output.splitlines()[2].split()
    assert data_line[:4] == ["mine", topic, "2", "6"]
    assert "0:4 1:2" in result.output

    as_json = CliRunner().invoke(
        status, ["--brokers", kafka_bootstrap, "--pipelines-file", str(pipelines), "--interval", "0", "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    assert '"lag": 6' in as_json.output


def test_status_command_bad_pipeline_is_one_line(kafka_bootstrap: str) -> None:
    result = CliRunner().invoke(status, ["--brokers", kafka_bootstrap, "--pipeline", "nope", "--interval", "0"])
    assert result.exit_code == 2
    assert "unknown pipeline 'nope'" in result.output


def test_status_command_unreachable_broker_is_one_line() -> None:
    result = CliRunner().invoke(status, ["--brokers", "127.0.0.1:1", "--interval", "0"])
    assert result.exit_code == 2
    assert "cannot read offsets from the Kafka broker 127.0.0.1:1" in result.output
    assert "Traceback" not in result.output
