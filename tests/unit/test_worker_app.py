"""The Faust app wiring, built without connecting: pipelines share one encoder; a reload swaps all."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.classifier import Classifier
from tests.unit.test_classifier import make_encoder, make_head
from worker.app import WorkerApp
from worker.config import Pipeline, load_settings


@pytest.fixture
def pipelines() -> list[Pipeline]:
    return [
        Pipeline(name="news", input="n.raw", output="n.out", dead_letter="n.dead", heads=["topic", "sentiment"]),
        Pipeline(name="email", input="e.raw", output="e.out", dead_letter="e.dead", heads=["spam", "sentiment"]),
    ]


def test_pipelines_share_one_encoder_and_model_thread(classifier: Classifier, pipelines: list[Pipeline]) -> None:
    app = WorkerApp(load_settings(web_port=0, cache_ttl_s=0), pipelines, classifier)
    assert [p.pipeline.name for p in app.processors] == ["news", "email"]
    assert all(p.loaded.model is classifier for p in app.processors)
    assert len({id(p.loaded.model.encoder) for p in app.processors}) == 1
    assert len({id(p.pool.executor) for p in app.processors}) == 1
    # Each pipeline's version covers its own heads only.
    assert app.processors[0].model_version != app.processors[1].model_version


def test_use_swaps_the_model_of_every_pipeline(
    classifier: Classifier, pipelines: list[Pipeline], bert, tokenizer
) -> None:
    app = WorkerApp(load_settings(web_port=0, cache_ttl_s=0), pipelines, classifier)
    before = [p.model_version for p in app.processors]
    heads = {
        "sentiment": make_head("sentiment", 11),
        "spam": make_head("spam", 12, hidden=0),
        "topic": make_head("topic", 13),
    }
    new = Classifier(make_encoder(bert, tokenizer), heads, {name: f"v2-{name}" for name in heads})
    app.use(new)
    assert all(app.model[p.name] is new for p in pipelines)
    assert all(p.loaded.model is new for p in app.processors)
    assert [p.model_version for p in app.processors] != before


def test_model_instances_size_the_model_pool_and_the_batches_in_flight(
    pipelines: list[Pipeline], bert, tokenizer
) -> None:
    heads = {
        "sentiment": make_head("sentiment", 1),
        "spam": make_head("spam", 2, hidden=0),
        "topic": make_head("topic", 3),
    }
    model = Classifier(make_encoder(bert, tokenizer, instances=3), heads)
    app = WorkerApp(load_settings(web_port=0, cache_ttl_s=0), pipelines, model)
    assert app.pool.executor._max_workers == 3  # one thread per instance
    assert app.pool.max_in_flight == 4  # one batch in each instance, one delivering
    assert all(p.pool is app.pool for p in app.processors)
    # Each pipeline has its own count of every instance: an idle pipeline, whose agent holds a slot
    # while it waits for events, cannot keep an instance from a busy one.
    pools = [app.pool.free[p.pipeline.name] for p in app.processors]
    assert len(pools) == len(pipelines) >= 2 and len({id(pool) for pool in pools}) == len(pools)
    assert all(pool._value == 3 for pool in pools)


def test_faust_env_vars_cannot_override_the_worker_settings(
    classifier: Classifier, pipelines: list[Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust reads unprefixed env vars (WEB_BIND, PRODUCER_ACKS, BROKER_URL, ...) over its kwargs;
    the worker's effective settings come from BERTSTREAM_* alone."""
    for name, value in {
        "WEB_BIND": "0.0.0.0",
        "WEB_HOST": "0.0.0.0",
        "WEB_PORT": "tcp://10.0.0.1:80",  # Kubernetes' service link for a Service named "web"
        "PRODUCER_ACKS": "1",
        "STREAM_WAIT_EMPTY": "false",
        "BROKER_URL": "amqp://guest@rabbit//",  # Celery's
        "BROKER_SESSION_TIMEOUT": "99",
        "APP_ENV_PREFIX": "",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(web_port=7070, kafka_brokers="k1:9092;k2:9093")
    conf = WorkerApp(settings, pipelines, classifier).app.conf
    assert conf.web_bind == "127.0.0.1" and conf.web_host == "127.0.0.1" and conf.web_port == 7070
    assert conf.producer_acks == -1
    assert conf.stream_wait_empty is True
    assert [str(u) for u in conf.broker] == ["kafka://k1:9092", "kafka://k2:9093"]
    assert conf.broker_session_timeout == settings.session_timeout_s


def test_heads_with_the_same_base_name_stay_apart(tmp_path: Path, bert, tokenizer) -> None:
    """One pipeline's sentiment head and another's /models/x/sentiment: each gets its own labels."""
    from pipelines.heads import Head, HeadSpec, save_head
    from tests.unit.test_classifier import HIDDEN

    mood, mail = tmp_path / "a" / "sentiment", tmp_path / "b" / "sentiment"
    save_head(Head(HeadSpec(name="sentiment", labels=["negative", "neutral", "positive"], input_dim=HIDDEN)), mood)
    save_head(Head(HeadSpec(name="sentiment", labels=["ham", "spam"], input_dim=HIDDEN)), mail)
    pipelines = [
        Pipeline(name="news", input="n.raw", output="n.out", dead_letter="n.dead", heads=[str(mood)]),
        Pipeline(name="email", input="e.raw", output="e.out", dead_letter="e.dead", heads=[str(mail)]),
    ]
    model = Classifier.load(make_encoder(bert, tokenizer), [h for p in pipelines for h in p.heads])
    app = WorkerApp(load_settings(web_port=0, cache_ttl_s=0), pipelines, model)
    news, email = app.processors
    assert news.model_version != email.model_version
    prepared = model.prepare(["a quiet day"])
    [news_result] = model.run(prepared, pipelines[0].heads)
    [email_result] = model.run(prepared, pipelines[1].heads)
    assert news_result.results["sentiment"]["label"] in {"negative", "neutral", "positive"}
    assert email_result.results["sentiment"]["label"] in {"ham", "spam"}


def test_two_heads_answering_as_one_task_in_a_pipeline_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two heads answer as 'sentiment'"):
        Pipeline(name="p", input="i", output="o", dead_letter="d", heads=["sentiment", str(tmp_path / "sentiment")])


def test_a_partial_delivery_failure_resends_only_what_failed(
    classifier: Classifier, pipelines: list[Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole batch was sent again after one failed message: duplicates without any crash."""
    import asyncio

    import worker.app
    from worker.processor import Outgoing

    app = WorkerApp(load_settings(web_port=0, cache_ttl_s=0), pipelines, classifier)
    sent: list[bytes] = []
    failures = {b"m2": 1}

    async def send(message: Outgoing) -> asyncio.Future:
        sent.append(message.value)
        future = asyncio.get_running_loop().create_future()
        if failures.get(message.value, 0) > 0:
            failures[message.value] -= 1
            future.set_exception(RuntimeError("NOT_ENOUGH_REPLICAS"))
        else:
            future.set_result(None)
        return future

    monkeypatch.setattr(app, "_send", send)  # the producer's hand-off; the retry logic is tested
    monkeypatch.setattr(worker.app, "SEND_RETRY_S", 0.01)
    asyncio.run(app._deliver("news", [Outgoing("n.out", None, value) for value in (b"m1", b"m2", b"m3")]))
    assert sent == [b"m1", b"m2", b"m3", b"m2"]


def test_buffered_and_fetched_bytes_are_bounded(classifier: Classifier, pipelines: list[Pipeline]) -> None:
    """Faust buffers 4096 events per stream and fetches 4 MB per partition by default: a flood of
    1 MB events could hold gigabytes before the size check."""
    settings = load_settings(web_port=0, cache_ttl_s=0, batch_size=32)
    conf = WorkerApp(settings, pipelines, classifier).app.conf
    assert conf.stream_buffer_maxsize * settings.max_event_bytes <= settings.buffer_bytes  # 512 MiB at 1 MB events
    assert conf.consumer_max_fetch_size <= 2 * settings.max_event_bytes
    small = load_settings(web_port=0, cache_ttl_s=0, batch_size=32, max_event_bytes=16_384)
    assert WorkerApp(small, pipelines, classifier).app.conf.stream_buffer_maxsize == 4096  # Faust's default


def test_revoked_partitions_leave_the_lag_bookkeeping(classifier: Classifier, pipelines: list[Pipeline]) -> None:
    from collections import namedtuple

    tp = namedtuple("TP", "topic partition")
    app = WorkerApp(load_settings(web_port=0, cache_ttl_s=0), pipelines, classifier)
    app._processed = {("n.raw", 0): 10, ("n.raw", 1): 20}
    app.forget_partitions({tp("n.raw", 0)})
    assert app._processed == {("n.raw", 1): 20}


def test_a_batch_is_held_while_the_model_is_unavailable(
    classifier: Classifier, pipelines: list[Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No dead letters and no ack while the model fails: the same batch is tried until it goes through."""
    import asyncio

    import worker.app
    from worker.model_pool import ModelUnavailable

    app = WorkerApp(load_settings(web_port=0, cache_ttl_s=0), pipelines, classifier)
    attempts: list[int] = []

    class Flaky:
        pipeline = pipelines[0]

        async def process(self, records: list) -> list:
            attempts.append(len(records))
            if len(attempts) < 3:
                raise ModelUnavailable("CUDA error")
            return ["classified"] * len(records)

    monkeypatch.setattr(worker.app, "MODEL_RETRY_S", 0.01)
    assert asyncio.run(app._classify(Flaky(), ["r1", "r2"])) == ["classified", "classified"]
    assert attempts == [2, 2, 2]  # the whole batch each time, nothing dead-lettered in between
