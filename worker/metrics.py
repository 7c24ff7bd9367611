"""Prometheus metrics, named by Prometheus conventions (base units, _total for counters)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

EVENTS_IN = Counter("bertstream_events_in_total", "Input events read", ["pipeline"])
EVENTS_OUT = Counter("bertstream_events_out_total", "Enriched events delivered", ["pipeline", "topic"])
DEAD_LETTERS = Counter("bertstream_dead_letters_total", "Events sent to the dead-letter topic", ["pipeline", "error"])
REDELIVERED = Counter(
    "bertstream_redelivered_skipped_total",
    "Redelivered records whose outputs were already delivered (not produced again)",
    ["pipeline"],
)
CACHE_HITS = Counter("bertstream_cache_hits_total", "Results served from the Redis cache", ["pipeline"])
CACHE_MISSES = Counter("bertstream_cache_misses_total", "Results computed by the model", ["pipeline"])
REDIS_DEGRADED = Gauge("bertstream_redis_degraded", "1 while Redis is unreachable and the cache is bypassed")
BATCH_SIZE = Histogram(
    "bertstream_batch_size", "Events per micro-batch", ["pipeline"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
BATCH_SECONDS = Histogram(
    "bertstream_batch_duration_seconds", "Wall time to handle one micro-batch, delivery included", ["pipeline"]
)
MODEL_SECONDS = Histogram("bertstream_model_duration_seconds", "Model time per micro-batch", ["pipeline"])
E2E_SECONDS = Histogram(
    "bertstream_event_latency_seconds",
    "From the input record's timestamp to delivery of its output",
    ["pipeline"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_LAG = Gauge(
    "bertstream_consumer_lag",
    "Records behind the fetch high watermark, per assigned input partition",
    ["pipeline", "topic", "partition"],
)
MODEL_FAILING = Gauge(
    "bertstream_model_failing", "1 while the model fails every batch: batches are held, not acked, and /readyz fails"
)
MODEL_RELOADS = Counter("bertstream_model_reloads_total", "Model hot reloads", ["result"])
MODEL_INFO = Info("bertstream_model", "The loaded model: name and content version")
OTHER_LANGUAGE = Counter(
    "bertstream_other_language_total",
    "Events in a language the pipeline does not serve, by what was done with them",
    ["pipeline", "language", "action"],
)
ANSWERS = Counter(
    "bertstream_answers_total", "Questions of answering pipelines, answered or not", ["pipeline", "answered"]
)
