"""A: the naive baseline a user writes first.

A kafka-python consumer loop that, per message, runs a transformers pipeline, applies the heads
and produces the result with kafka-python. `pipeline("text-classification")` would need a
BertForSequenceClassification checkpoint, which we do not have: our heads sit on pooled encoder
features. So the honest equivalent is `pipeline("feature-extraction")` on the same encoder
directory (fp32, one text per call, on the bench's device), mean pooling, then our committed heads, one message at a time.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from worker.connection import KafkaConnection

NOTE = (
    "kafka-python consumer loop; per message: transformers pipeline('feature-extraction') on the "
    "encoder directory (fp32, one text per call), mean pooling, our heads, one kafka-python send. "
    "text-classification would need a BertForSequenceClassification checkpoint; our heads sit on "
    "pooled features, so feature-extraction + the same heads is the equivalent."
)


def _pipeline(model_dir: Path, layers: set[int], device: str) -> Any:
    import transformers
    from transformers import pipeline
    from transformers.pipelines import FeatureExtractionPipeline

    transformers.logging.set_verbosity_error()
    if layers == {-1}:
        return pipeline("feature-extraction", model=str(model_dir), device=device)

    class HiddenStates(FeatureExtractionPipeline):
        """Heads that read other layers than the last: the pipeline returns every hidden state."""

        def postprocess(self, model_outputs: Any, **kwargs: Any) -> Any:
            return model_outputs

    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(model_dir), output_hidden_states=True)
    return HiddenStates(model=model, tokenizer=AutoTokenizer.from_pretrained(str(model_dir)), device=device)


def run_baseline(
    kafka: KafkaConnection,
    heads: list[str],
    values: list[tuple[str, bytes]],
    model_dir: Path | None,
    device: str = "cpu",
    timeout_s: float = 900,
) -> dict[str, Any]:
    """Produce `values` up front to a fresh topic, then time the naive loop from its first record
    to the flush of its last output."""
    import torch
    from kafka import KafkaConsumer, KafkaProducer

    from pipelines.heads import load_head
    from pipelines.registry import default_model_dir, resolve_head_dir, task_name
    from worker.config import load_settings
    from worker.connection import ensure_topics

    settings = load_settings()
    if settings.threads > 0:  # the same thread setting as our engine (BERTSTREAM_THREADS)
        torch.set_num_threads(settings.threads)
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    loaded = {task_name(h): load_head(resolve_head_dir(h))[0] for h in heads}
    layers = {layer for head in loaded.values() for layer in head.spec.layers}
    run = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"bench-{run}-naive-in", f"bench-{run}-naive-out"
    ensure_topics(kafka, [topic_in, topic_out], partitions=1)
    producer = KafkaProducer(acks="all", linger_ms=5, **kafka.kafka_python())
    for _, value in values:
        producer.send(topic_in, value)
    producer.flush()

    pipe = _pipeline(model_dir, layers, device)
    pipe("warm-up")  # the model is loaded and has run once before the clock starts
    consumer = KafkaConsumer(
        topic_in,
        **kafka.kafka_python(),
        group_id=f"bench-naive-{run}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    done = 0
    started = None
    deadline = time.monotonic() + timeout_s
    try:
        # The loop as a user writes it: one message, one model call, one send.
        while done < len(values) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for message in records:
                    if started is None:
                        started = time.perf_counter()
                    event = json.loads(message.value)
                    out = pipe(event["text"], tokenize_kwargs={"truncation": True})
                    with torch.no_grad():
                        if layers == {-1}:
                            pooled = {-1: torch.tensor(out[0]).mean(dim=0, keepdim=True)}
                        else:
                            pooled = {
                                layer: out.hidden_states[layer][0].float().cpu().mean(dim=0, keepdim=True)
                                for layer in layers
                            }
                        results = {}
                        for task, head in loaded.items():
                            probs = torch.softmax(head.predict_features(pooled, [event["text"]]), dim=1)[0]
                            top = int(probs.argmax())
                            results[task] = {
                                "label": head.spec.labels[top],
                                "score": float(probs[top]),
                                "scores": dict(zip(head.spec.labels, probs.tolist())),
                            }
                    producer.send(topic_out, json.dumps({"id": event["id"], "results": results}).encode())
                    done += 1
        producer.flush()
        seconds = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
        producer.close()
    if done < len(values):
        raise RuntimeError(f"naive baseline: {done}/{len(values)} events within {timeout_s:.0f}s")
    return {
        "events": done,
        "seconds": round(seconds, 4),
        "events_per_s": round(done / seconds, 2),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "note": NOTE,
    }
