"""The real worker process, the real default model and heads, a real broker and a real Redis."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from bertstream.devservices.process import free_port, log_tail, stop_process_group
from bertstream.devservices.stack import worker_env
from bertstream.devservices.worker_process import start_worker_process, wait_ready
from pipelines.classifier import Classifier
from pipelines.encoder import Encoder
from pipelines.heads import load_head
from pipelines.registry import resolve_head_dir
from worker.cache import cache_key
from worker.codec import Source, decode, raw_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DEMO = Path(__file__).resolve().parents[2] / "bertstream" / "demo" / "data"
HEADS = ["email_topic", "spam", "sentiment"]
EMAIL_SPAM = "spam_email"  # the spam head for whole e-mails (email_heads)
MALFORMED = [
    b'{"text": "unterminated',
    b'["not", "an", "object"]',
    b'{"id": "x1"}',
    b'{"text": ""}',
    b'{"text": 42}',
    b"\xff\xfe not utf-8",
    b'{"text": "   "}',
]
CLEAR_SPAM = (
    "WINNER!! You have been selected to receive a 900 pound prize reward! To claim call 09061701461 "
    "now. Claim code KL341. Valid 12 hours only."
)
CLEAR_POSITIVE = "Thank you so much, the party was wonderful and we loved every minute of it!"


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    run = uuid.uuid4().hex[:8]
    topics = {k: f"e2e-{run}-{k}" for k in ("in", "out", "spam", "dead")}
    tmp = tmp_path_factory.mktemp("e2e")
    pipelines_file = tmp / "pipelines.toml"
    pipelines_file.write_text(
        f'[pipelines.e2e]\ninput = "{topics["in"]}"\noutput = "{topics["out"]}"\ndead_letter = "{topics["dead"]}"\n'
        f"heads = {json.dumps(HEADS)}\n"
        f'routes = [{{ head = "spam", label = "spam", topic = "{topics["spam"]}" }}]\n'
        f'email_heads = {{ spam = "{EMAIL_SPAM}" }}\n'
    )
    port = free_port()
    env = worker_env(
        kafka_bootstrap,
        redis_url,
        f"e2e-{run}",
        port,
        pipelines_file=str(pipelines_file),
        session_timeout_s="6",
        kafka_partitions="2",
    )
    log = tmp / "worker.log"
    proc = start_worker_process(env, ["e2e"], log)
    try:
        wait_ready(proc, port, log, timeout_s=300)
        yield {
            "proc": proc,
            "port": port,
            "topics": topics,
            "log": log,
            "bootstrap": kafka_bootstrap,
            "redis_url": redis_url,
        }
    finally:
        stop_process_group(proc, 30)


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> list[tuple[str, int, int]]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    futures = [producer.send(topic, v) for v in values]
    producer.flush()
    meta = [f.get(timeout=30) for f in futures]
    producer.close()
    return [(m.topic, m.partition, m.offset) for m in meta]


def _consume(
    bootstrap: str,
    topics: list[str],
    want: int,
    timeout_s: float = 240,
    until: Callable[[list[tuple[str, dict[str, Any]]]], bool] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=f"reader-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    got: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and not (until and until(got)) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                got += [(tp.topic, json.loads(r.value)) for r in records]
    finally:
        consumer.close()
    return got


def _texts(n: int) -> list[str]:
    lines = [json.loads(line)["text"] for line in (DEMO / "email.jsonl").read_text().splitlines() if line.strip()]
    return [CLEAR_SPAM, CLEAR_POSITIVE] + lines[: n - 2]


def test_events_classified_dead_lettered_and_cached(worker: dict[str, Any]) -> None:
    t, bootstrap = worker["topics"], worker["bootstrap"]
    labels = {name: load_head(resolve_head_dir(name))[0].spec.labels for name in HEADS}
    texts = _texts(40)
    # A cold cache for these texts: an earlier run on this Redis may have cached them (24 h TTL).
    version = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{worker['port']}/readyz", timeout=5).read())["model"]
    redis.Redis.from_url(worker["redis_url"]).delete(*[cache_key(version, HEADS + [EMAIL_SPAM], x) for x in texts])
    first = [json.dumps({"id": f"a-{i}", "text": x, "metadata": {"n": i}}).encode() for i, x in enumerate(texts)]
    sources = _produce(bootstrap, t["in"], first + MALFORMED)
    bad_sources = {s: raw for s, raw in zip(sources[len(first) :], MALFORMED)}

    got = _consume(bootstrap, [t["out"], t["spam"], t["dead"]], len(first) + len(MALFORMED))
    outputs = {doc["id"]: (topic, doc) for topic, doc in got if topic != t["dead"]}
    dead = [doc for topic, doc in got if topic == t["dead"]]
    assert set(outputs) == {f"a-{i}" for i in range(len(texts))}, log_tail(worker["log"])
    for topic, doc in outputs.values():
        assert set(doc) >= {"id", "results", "model", "cached", "source", "metadata", "latency_ms", "truncated"}
        assert set(doc["results"]) == set(HEADS)
        for task, result in doc["results"].items():
            assert result["label"] in labels[task]
            assert set(result["scores"]) == set(labels[task])
            assert abs(sum(result["scores"].values()) - 1) < 1e-3
        assert doc["cached"] is False
        assert (topic == t["spam"]) == (doc["results"]["spam"]["label"] == "spam")
        assert doc["model"]["version"] and doc["model"]["name"]
    assert outputs["a-0"][1]["results"]["spam"]["label"] == "spam"
    assert outputs["a-0"][0] == t["spam"]
    assert outputs["a-1"][1]["results"]["spam"]["label"] == "ham"
    assert outputs["a-1"][1]["results"]["sentiment"]["label"] == "positive"
    assert outputs["a-5"][1]["metadata"] == {"n": 5}

    assert len(dead) == len(MALFORMED)
    for doc in dead:
        src = (doc["source"]["topic"], doc["source"]["partition"], doc["source"]["offset"])
        assert raw_bytes(doc) == bad_sources[src]
        assert doc["error"] and doc["detail"]

    # A second pass of the same texts is served from Redis.
    second = [json.dumps({"id": f"b-{i}", "text": x}).encode() for i, x in enumerate(texts)]
    _produce(bootstrap, t["in"], second)
    got = _consume(bootstrap, [t["out"], t["spam"]], 2 * len(texts))
    again = {doc["id"]: doc for _, doc in got if doc["id"].startswith("b-")}
    assert len(again) == len(texts)
    assert all(doc["cached"] for doc in again.values())
    for i in range(len(texts)):
        assert again[f"b-{i}"]["results"] == outputs[f"a-{i}"][1]["results"]

    with urllib.request.urlopen(f"http://127.0.0.1:{worker['port']}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    assert 'bertstream_events_in_total{pipeline="e2e"}' in body
    assert 'bertstream_cache_hits_total{pipeline="e2e"} 40.0' in body


def test_raw_mime_messages_through_the_worker(worker: dict[str, Any]) -> None:
    """The demo's raw e-mail messages (multipart, HTML only, quoted-printable Latin-1, GB2312 in
    base64) as email / email_b64 events: parsed headers in the output, labels, routing."""
    t, bootstrap = worker["topics"], worker["bootstrap"]
    events = [json.loads(line) for line in (DEMO / "email_mime.jsonl").read_text().splitlines() if line.strip()]
    values = [json.dumps({k: v for k, v in e.items() if k != "id"}).encode() for e in events]
    broken = json.dumps({"email": "just words, no headers"}).encode()
    _produce(bootstrap, t["in"], values + [broken])
    expected_ids = {f"<demo-mime-{i}@" for i in range(1, 5)}

    def outputs(got: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, dict[str, Any]]]:
        return {
            doc["id"]: (topic, doc)
            for topic, doc in got
            if topic != t["dead"] and any(doc["id"].startswith(prefix) for prefix in expected_ids)
        }

    def complete(got: list[tuple[str, dict[str, Any]]]) -> bool:
        seen_broken = any(topic == t["dead"] and raw_bytes(doc) == broken for topic, doc in got)
        return len(outputs(got)) == 4 and seen_broken

    got = _consume(bootstrap, [t["out"], t["spam"], t["dead"]], 100_000, until=complete)
    mine = outputs(got)
    assert len(mine) == 4, log_tail(worker["log"])
    subjects = {doc["email"]["subject"] for _, doc in mine.values()}
    assert subjects == {
        "Q3 shipping report attached",
        "CONGRATULATIONS! You won a $1000 gift card",
        "Menu du jour à partir de lundi",
        "季度总结会通知",
    }
    # The spam answer of an e-mail is the e-mail head's: the same text offline, through both heads.
    parsed = {e.id: e.text for e in (decode(v, Source("x", 0, i)) for i, v in enumerate(values))}
    offline = Classifier.load(Encoder(), ["spam", EMAIL_SPAM]).predict(list(parsed.values()))
    spam_score = {i: {k: r["scores"]["spam"] for k, r in p.results.items()} for i, p in zip(parsed, offline)}
    for topic, doc in mine.values():
        assert doc["id"] == doc["email"]["message_id"]  # the Message-ID is the default id
        assert doc["email"]["from"] and doc["email"]["date"]
        assert set(doc["results"]) == set(HEADS)
        assert (topic == t["spam"]) == (doc["results"]["spam"]["label"] == "spam")
        assert abs(doc["results"]["spam"]["scores"]["spam"] - spam_score[doc["id"]][EMAIL_SPAM]) < 0.05
    # The two heads disagree enough on these messages for the check above to tell them apart.
    assert max(abs(s["spam"] - s[EMAIL_SPAM]) for s in spam_score.values()) > 0.2
    dead = [doc for topic, doc in got if topic == t["dead"] and doc["error"] == "email_malformed"]
    assert any(raw_bytes(doc) == broken for doc in dead)


def test_sigterm_stops_cleanly(worker: dict[str, Any]) -> None:  # last: it stops the module's worker
    proc = worker["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log_tail(worker["log"])
