"""Languages and answers through the real worker: a real broker, a real Redis, the real encoders.

One worker runs three pipelines: an English one that routes other languages to the multilingual
pipeline's input, the multilingual pipeline (multilingual-e5-small and its sentiment head), and an
answering pipeline on the demo knowledge base, whose file is changed in the middle of the stream.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bertstream.devservices.process import free_port, stop_process_group
from bertstream.devservices.stack import worker_env
from bertstream.devservices.worker_process import start_worker_process, wait_ready
from pipelines.registry import multilingual_model_dir
from tests.e2e.test_worker_e2e import _consume, _produce

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

KB = Path(__file__).resolve().parents[2] / "worker" / "kb" / "support.jsonl"
NEW_ENTRY = {
    "id": "gift-wrap",
    "question": ["Do you offer gift wrapping?", "可以提供礼品包装吗？"],
    "answer": "Yes: tick 'gift wrap' at checkout, for 3 euros per parcel.",
    "category": "orders",
}


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not (multilingual_model_dir() / "config.json").is_file():
        pytest.fail("the multilingual encoder is not built: run `bertstream encoders build` (make setup does)")
    run = uuid.uuid4().hex[:8]
    t = {k: f"e2e-{run}-{k}" for k in ("news", "news-out", "ml", "ml-out", "q", "a", "humans", "dead")}
    tmp = tmp_path_factory.mktemp("languages")
    kb = tmp / "kb.jsonl"
    shutil.copy(KB, kb)
    pipelines_file = tmp / "pipelines.toml"
    pipelines_file.write_text(
        f'[pipelines.news]\ninput = "{t["news"]}"\noutput = "{t["news-out"]}"\ndead_letter = "{t["dead"]}"\n'
        'heads = ["sentiment"]\nlanguages = ["en"]\nother_languages = "route"\n'
        f'other_languages_topic = "{t["ml"]}"\n'
        f'[pipelines.multilingual]\ninput = "{t["ml"]}"\noutput = "{t["ml-out"]}"\ndead_letter = "{t["dead"]}"\n'
        'model = "multilingual"\nheads = ["multilingual/sentiment"]\n'
        f'[pipelines.support]\ninput = "{t["q"]}"\noutput = "{t["a"]}"\ndead_letter = "{t["dead"]}"\n'
        f'model = "multilingual"\nanswers = "{kb}"\nunanswered = "{t["humans"]}"\n'
    )
    port = free_port()
    env = worker_env(
        kafka_bootstrap,
        redis_url,
        f"e2e-{run}",
        port,
        pipelines_file=str(pipelines_file),
        session_timeout_s="6",
        kafka_partitions="1",
    )
    env["BERTSTREAM_RELOAD_CHECK_S"] = "1"
    log = tmp / "worker.log"
    proc = start_worker_process(env, ["news", "multilingual", "support"], log)
    try:
        wait_ready(proc, port, log, timeout_s=300)
        yield {"topics": t, "bootstrap": kafka_bootstrap, "kb": kb, "log": log}
    finally:
        stop_process_group(proc, 30)


def _events(texts: list[str], prefix: str) -> list[bytes]:
    return [json.dumps({"id": f"{prefix}-{i}", "text": text}).encode() for i, text in enumerate(texts)]


def test_other_languages_are_routed_to_the_multilingual_pipeline(worker: dict[str, Any]) -> None:
    t, bootstrap = worker["topics"], worker["bootstrap"]
    texts = [
        "The service was terrible and I will never come back.",
        "服务很差，我再也不来了。",
        "质量非常好，物流也快，很满意。",
    ]
    _produce(bootstrap, t["news"], _events(texts, "lang"))
    got = {doc["id"]: (topic, doc) for topic, doc in _consume(bootstrap, [t["news-out"], t["ml-out"]], want=3)}
    assert set(got) == {"lang-0", "lang-1", "lang-2"}
    topic, english = got["lang-0"]
    assert topic == t["news-out"] and english["language"]["code"] == "en"
    assert english["results"]["sentiment"]["label"] == "negative"
    for event_id, label in (("lang-1", "negative"), ("lang-2", "positive")):
        topic, doc = got[event_id]
        assert topic == t["ml-out"], "a Chinese text must not get the English model's answer"
        assert doc["language"]["code"] == "zh" and doc["language"]["coverage"] > 0.9
        assert doc["model"]["name"] == "multilingual-e5-small"
        assert doc["results"]["sentiment"]["label"] == label


def test_questions_get_answers_abstentions_and_a_reloaded_knowledge_base(worker: dict[str, Any]) -> None:
    t, bootstrap = worker["topics"], worker["bootstrap"]
    questions = [
        "Where is my order?",
        "我的订单到哪里了？",
        "What is the capital of Mongolia?",
        "Do you offer gift wrapping?",
    ]
    _produce(bootstrap, t["q"], _events(questions, "q1"))
    got = {doc["id"]: (topic, doc) for topic, doc in _consume(bootstrap, [t["a"], t["humans"]], want=4)}
    assert got["q1-0"][0] == t["a"] and got["q1-0"][1]["answer"]["id"] == "order-status"
    assert got["q1-1"][0] == t["a"] and got["q1-1"][1]["answer"]["id"] == "order-status"  # Chinese, same entry
    assert got["q1-2"][0] == t["humans"] and got["q1-2"][1]["answer"] is None  # out of scope: no answer
    assert got["q1-3"][1]["answer"] is None or got["q1-3"][1]["answer"]["id"] != "gift-wrap"
    assert all(len(doc["candidates"]) >= 1 for _, doc in got.values())

    with worker["kb"].open("a") as kb:  # a new entry, while the worker runs
        kb.write(json.dumps(NEW_ENTRY, ensure_ascii=False) + "\n")
    deadline = time.monotonic() + 120
    while "model_reloaded" not in worker["log"].read_text() and time.monotonic() < deadline:
        time.sleep(1)
    assert "model_reloaded" in worker["log"].read_text(), "the changed knowledge base was not reloaded"
    _produce(bootstrap, t["q"], _events(["Do you offer gift wrapping?", "可以提供礼品包装吗？"], "q2"))
    after = {
        doc["id"]: doc for _, doc in _consume(bootstrap, [t["a"], t["humans"]], want=6) if doc["id"].startswith("q2")
    }
    assert after["q2-0"]["answer"]["id"] == "gift-wrap"
    assert after["q2-1"]["answer"]["id"] == "gift-wrap"

    with worker["kb"].open("a") as kb:  # a bad change: a duplicate id keeps the old knowledge base
        kb.write(json.dumps(NEW_ENTRY, ensure_ascii=False) + "\n")
    deadline = time.monotonic() + 120
    while "model_reload_failed" not in worker["log"].read_text() and time.monotonic() < deadline:
        time.sleep(1)
    assert "model_reload_failed" in worker["log"].read_text()
    failed = [line for line in worker["log"].read_text().splitlines() if "model_reload_failed" in line]
    assert "gift-wrap" in failed[0]  # names the duplicate
    _produce(bootstrap, t["q"], _events(["Do you offer gift wrapping at checkout?"], "q3"))
    docs = [doc for _, doc in _consume(bootstrap, [t["a"], t["humans"]], want=7) if doc["id"] == "q3-0"]
    assert docs and docs[0]["answer"] is not None and docs[0]["answer"]["id"] == "gift-wrap"
