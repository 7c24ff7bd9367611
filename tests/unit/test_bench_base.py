"""The bench's BERT-base-sized encoder: the shapes the GPU section measures, and that it runs."""

from __future__ import annotations

from bertstream.bench.base import base_sized_classifier, run_base_suite


def test_base_sized_classifier_has_bert_base_shapes() -> None:
    classifier = base_sized_classifier("fp32", ["news_topic", "sentiment"], "cpu")
    config = classifier.encoder.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (12, 768, 12)
    assert sorted(classifier.heads) == ["news_topic", "sentiment"]
    assert all(h.spec.input_dim == 768 for h in classifier.heads.values())
    (result,) = classifier.predict(["Oil prices jumped after OPEC cut output."], ["news_topic"])
    assert result.results["news_topic"]["label"] in classifier.heads["news_topic"].spec.labels


def test_run_base_suite_reports_each_precision() -> None:
    seen: list[str] = []
    out = run_base_suite(
        ["spam"],
        ["spam"],
        ["a short text", "another one"],
        "cpu",
        ["fp32", "bf16"],
        batch=2,
        min_seconds=0.01,
        log=seen.append,
        instances=2,
    )
    assert 105 < out["params_millions"] < 112  # BERT-base without its pooler
    assert set(out["precisions"]) == {"fp32", "bf16"}
    assert all(v["events_per_s"] > 0 and v["texts"] >= 4 for v in out["precisions"].values())
    assert len(seen) == 2
    assert all(v["instances"] == 2 for v in out["precisions"].values())  # the worker's plan, passed in


def test_model_throughput_reports_cpu_seconds_per_event() -> None:
    from bertstream.bench.model import throughput

    classifier = base_sized_classifier("fp32", ["spam"], "cpu")
    figure = throughput(classifier, ["a short text", "another one"], ["spam"], batch=2, min_seconds=0.01, instances=1)
    assert figure["texts"] >= 2 and figure["cpu_seconds_per_event"] > 0
    # min_seconds already passed when the threads start (as on a busy machine): still one chunk
    figure = throughput(classifier, ["a short text", "another one"], ["spam"], batch=2, min_seconds=0, instances=2)
    assert figure["texts"] >= 2 and figure["calls"] >= 1 and figure["cpu_seconds_per_event"] > 0
