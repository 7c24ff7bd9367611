"""`bertstream status`: per pipeline, consumer lag from the broker and throughput, cache hit rate and
dead letters from the workers' /metrics, as a terminal table.

Lag is the fetch high watermark minus the group's committed offset, per partition of the input
topic. The high watermark is read from a fetch response (assign, seek to the end, poll), not from
ListOffsets "latest": the embedded tansu broker answers that with the base offset of the last
batch + 1, which under-reports lag.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from worker.config import Pipeline, Settings
from worker.main import brokers_option, pipelines_file_option

HIGHWATER_TIMEOUT_S = 10.0


# --- the broker side ------------------------------------------------------------------------------


def committed_offsets(settings: Settings, group_id: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets, {(topic, partition): offset}; empty when it committed nothing."""
    from kafka import KafkaAdminClient

    from worker.connection import KafkaConnection

    admin = KafkaAdminClient(
        request_timeout_ms=10000, bootstrap_timeout_ms=10000, **KafkaConnection.from_settings(settings).kafka_python()
    )
    try:
        groups = admin.list_group_offsets({group_id: None})
    finally:
        admin.close()
    return {
        (tp.topic, tp.partition): meta.offset
        for tp, meta in (groups.get(group_id) or {}).items()
        if meta is not None and meta.offset is not None and meta.offset >= 0
    }


def high_watermarks(
    settings: Settings, topics: Iterable[str], timeout_s: float = HIGHWATER_TIMEOUT_S
) -> dict[str, dict[int, tuple[int, int]]]:
    """{topic: {partition: (log start offset, high watermark)}}; a topic the broker does not know is left out.

    The high watermark comes from a fetch response: assign every partition, seek to the end, and
    poll until each partition has reported one.
    """
    from kafka import KafkaConsumer, TopicPartition

    from worker.connection import KafkaConnection

    consumer = KafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=10000,
        bootstrap_timeout_ms=10000,
        max_partition_fetch_bytes=64 * 1024,
        **KafkaConnection.from_settings(settings).kafka_python(),
    )
    try:
        known = consumer.topics()
        tps = [
            TopicPartition(topic, partition)
            for topic in dict.fromkeys(topics)
            if topic in known
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return {}
        starts = consumer.beginning_offsets(tps)
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                missing = [f"{tp.topic}[{tp.partition}]" for tp in tps if consumer.highwater(tp) is None]
                raise TimeoutError(f"no high watermark from the broker for {', '.join(missing)} within {timeout_s:g}s")
            consumer.poll(timeout_ms=200)
        out: dict[str, dict[int, tuple[int, int]]] = {}
        for tp in tps:
            out.setdefault(tp.topic, {})[tp.partition] = (starts.get(tp) or 0, consumer.highwater(tp))
        return out
    finally:
        consumer.close()


def partition_lag(watermarks: dict[int, tuple[int, int]], committed: dict[int, int]) -> dict[int, int]:
    """Per partition: high watermark minus the committed offset (the log start when nothing is committed)."""
    return {
        partition: max(0, high - max(committed.get(partition, start), start))
        for partition, (start, high) in sorted(watermarks.items())
    }


# --- the workers' side ----------------------------------------------------------------------------


def scrape(url: str, timeout_s: float = 5.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One /metrics page as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # a URL the user gave
        text = response.read().decode("utf-8")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _sum(samples: Iterable[dict], name: str, pipeline: str) -> float:
    return sum(
        value
        for scraped in samples
        for (sample, labels), value in scraped.items()
        if sample == name and dict(labels).get("pipeline") == pipeline
    )


def _scrape_all(urls: Sequence[str]) -> tuple[list[dict], list[str]]:
    scraped, errors = [], []
    for url in urls:
        try:
            scraped.append(scrape(url))
        except Exception as exc:  # noqa: BLE001 - one worker down must not hide the others
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
    return scraped, errors


# --- the table ------------------------------------------------------------------------------------


def status_rows(
    settings: Settings, pipelines: Sequence[Pipeline], metrics_urls: Sequence[str] = (), interval_s: float = 0.0
) -> list[dict[str, Any]]:
    """One dict per pipeline.

    Keys: pipeline, input, partitions, lag (None when the input topic does not exist),
    lag_by_partition, events_in, events_out, throughput_per_s (events in per second between two
    scrapes ``interval_s`` apart; None without metrics or with interval_s=0), cache_hit_rate (None
    before any lookup), dead_letters, workers (how many /metrics URLs answered), errors.
    """
    metrics_urls = list(metrics_urls)
    first, errors = _scrape_all(metrics_urls)
    started = time.monotonic()
    watermarks = high_watermarks(settings, [p.input for p in pipelines])
    committed = committed_offsets(settings, settings.group_id)
    second: list[dict] = []
    elapsed = 0.0
    if metrics_urls and interval_s > 0:
        time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
        elapsed = time.monotonic() - started
        second, errors = _scrape_all(metrics_urls)
    latest = second or first
    answered = bool(latest)

    rows = []
    for pipeline in pipelines:
        marks = watermarks.get(pipeline.input)
        lags = partition_lag(marks, {p: o for (t, p), o in committed.items() if t == pipeline.input}) if marks else {}
        hits = _sum(latest, "bertstream_cache_hits_total", pipeline.name)
        misses = _sum(latest, "bertstream_cache_misses_total", pipeline.name)
        events_in = _sum(latest, "bertstream_events_in_total", pipeline.name)
        throughput = None
        if second and first and elapsed > 0:
            throughput = max(0.0, events_in - _sum(first, "bertstream_events_in_total", pipeline.name)) / elapsed
        rows.append(
            {
                "pipeline": pipeline.name,
                "input": pipeline.input,
                "partitions": len(marks) if marks else 0,
                "lag": sum(lags.values()) if marks else None,
                "lag_by_partition": lags,
                "events_in": events_in if answered else None,
                "events_out": _sum(latest, "bertstream_events_out_total", pipeline.name) if answered else None,
                "throughput_per_s": throughput,
                "cache_hit_rate": hits / (hits + misses) if hits + misses > 0 else None,
                "dead_letters": _sum(latest, "bertstream_dead_letters_total", pipeline.name) if answered else None,
                "workers": len(latest),
                "errors": list(errors),
            }
        )
    return rows


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value * 100:.1f}%"
    if kind == "rate":
        return f"{value:,.1f}/s"
    if isinstance(value, float):
        return f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


COLUMNS = (
    ("PIPELINE", "pipeline", ""),
    ("INPUT", "input", ""),
    ("PARTS", "partitions", ""),
    ("LAG", "lag", ""),
    ("LAG BY PARTITION", "lag_by_partition", "parts"),
    ("IN/S", "throughput_per_s", "rate"),
    ("EVENTS IN", "events_in", ""),
    ("CACHE HIT", "cache_hit_rate", "pct"),
    ("DEAD LETTERS", "dead_letters", ""),
)
NUMERIC = {"partitions", "lag", "throughput_per_s", "events_in", "cache_hit_rate", "dead_letters"}


def render(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table, one line per pipeline, numbers right-aligned; notes below it."""
    cells = []
    for row in rows:
        line = []
        for _title, key, kind in COLUMNS:
            if kind == "parts":
                parts = row.get(key) or {}
                line.append(" ".join(f"{p}:{lag}" for p, lag in sorted(parts.items())) if parts else "-")
            else:
                line.append(_fmt(row.get(key), kind))
        cells.append(line)
    widths = [max([len(title)] + [len(c[i]) for c in cells]) for i, (title, _k, _d) in enumerate(COLUMNS)]

    def fmt_line(values: Sequence[str]) -> str:
        out = []
        for (_title, key, _kind), value, width in zip(COLUMNS, values, widths):
            out.append(value.rjust(width) if key in NUMERIC else value.ljust(width))
        return "  ".join(out).rstrip()

    lines = [fmt_line([t for t, _k, _d in COLUMNS]), fmt_line(["-" * w for w in widths])]
    lines += [fmt_line(c) for c in cells]
    notes = []
    if rows:
        workers = rows[0].get("workers", 0)
        errors = rows[0].get("errors") or []
        if workers or errors:
            notes.append(f"metrics from {workers} worker(s)")
        else:
            notes.append("no --metrics-url given: throughput, cache hit rate and dead letters need a worker's /metrics")
        notes += [f"unreachable: {e}" for e in errors]
        notes += [
            f"input topic {r['input']} does not exist yet (pipeline {r['pipeline']})"
            for r in rows
            if r.get("lag") is None
        ]
    return "\n".join(lines + notes) + "\n"


# --- the command ----------------------------------------------------------------------------------


@click.command("status")
@click.option(
    "--pipeline",
    "-p",
    "pipeline_names",
    multiple=True,
    default=["all"],
    show_default=True,
    help="Pipeline to show (repeatable); 'all' shows every pipeline of the pipelines file.",
)
@click.option(
    "--metrics-url",
    "metrics_urls",
    multiple=True,
    metavar="URL",
    help="A worker's metrics page, e.g. http://127.0.0.1:6066/metrics (repeatable: the workers are summed).",
)
@brokers_option
@click.option("--group-id", help="Consumer group of the workers  [env BERTSTREAM_GROUP_ID]")
@pipelines_file_option
@click.option(
    "--interval",
    "interval_s",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds between the two scrapes that give the throughput (0: one scrape, no throughput).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
def status(
    pipeline_names: tuple[str, ...],
    metrics_urls: tuple[str, ...],
    brokers: str | None,
    group_id: str | None,
    pipelines_file: Path | None,
    interval_s: float,
    as_json: bool,
) -> None:
    """Show per pipeline: consumer lag (from the broker), throughput, cache hit rate and dead letters
    (from the workers' /metrics)."""
    from kafka.errors import KafkaError

    from worker.config import ConfigError, load_pipelines, load_settings, select_pipelines

    settings = None
    try:
        settings = load_settings(kafka_brokers=brokers, group_id=group_id, pipelines_file=pipelines_file)
        pipelines = select_pipelines(load_pipelines(settings.pipelines_file), list(pipeline_names))
        rows = status_rows(settings, pipelines, list(metrics_urls), interval_s=interval_s)
    except (ConfigError, KafkaError, TimeoutError, OSError) as exc:
        message = str(exc) or type(exc).__name__
        if settings is not None and not isinstance(exc, ConfigError):
            if not message.startswith(type(exc).__name__):
                message = f"{type(exc).__name__}: {message}"
            message = (
                f"cannot read offsets from the Kafka broker {settings.kafka_brokers} ({message}): "
                "start one or set --brokers / BERTSTREAM_KAFKA_BROKERS"
            )
        from worker.errors import UserError

        raise UserError(message) from None
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        click.echo(render(rows), nl=False)
