"""The Faust app wiring, built without connecting: pipelines share one encoder; a reload swaps all."""

from __future__ import annotations

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
    assert app.model is new
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
