"""`bertstream demo`: the whole path on embedded defaults, with readable result tables.

One worker runs the four default pipelines: English news and e-mails (MiniLM), which pass texts in
other languages on to the multilingual pipeline (multilingual-e5-small), and the support pipeline,
which answers questions from its knowledge base. The feed is the committed demo data: English news
and e-mails (raw MIME messages among them), Chinese ones, support questions, and malformed records.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from bertstream.demo import DATA as DEMO_DATA
from bertstream.demo import tables
from bertstream.devservices.process import free_port
from bertstream.devservices.stack import peak_rss_mb, services, start_ready_worker, worker_env
from bertstream.devservices.worker_process import WorkerStartError
from bertstream.feed import make_consumer, make_producer
from worker.config import Pipeline, load_pipelines, load_settings

MIME_EVENTS = 4  # the raw e-mail messages of email_mime.jsonl


@dataclass(frozen=True)
class Group:
    """Demo events of one data file, fed to one pipeline."""

    name: str
    pipeline: str
    events: list[dict[str, Any]]


@dataclass
class PassResult:
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> final output event (+ "topic")
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # + "topic", and "id" when a fed event
    seconds: float = 0.0

    @property
    def cached(self) -> int:
        return sum(1 for o in self.outputs.values() if o["cached"])


def _load_events(name: str, count: int | None = None) -> list[dict[str, Any]]:
    """The events of data/<name>.jsonl, cycled to `count` (None: each once)."""
    lines = [json.loads(line) for line in (DEMO_DATA / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    return lines if count is None else [lines[i % len(lines)] for i in range(count)]


def demo_groups(events: int) -> list[Group]:
    """English news and e-mails, `events` of them, half each (the raw MIME messages first); then the
    Chinese news and e-mails, and the support questions, each once."""
    half = max(1, events // 2)
    mime = _load_events("email_mime", min(MIME_EVENTS, events - half))
    return [
        Group("news", "news", _load_events("news", half)),
        Group("email", "email", mime + _load_events("email", events - half - len(mime))),
        Group("news_zh", "news", _load_events("news_zh")),
        Group("email_zh", "email", _load_events("email_zh")),
        Group("support", "support", _load_events("support_questions")),
    ]


def pipelines_to_run(all_pipelines: Mapping[str, Pipeline], fed: set[str]) -> dict[str, Pipeline]:
    """The fed pipelines and those they route events on to (by language), in the file's order."""
    needed = set(fed)
    while True:
        routed = {t for n in needed for t in [all_pipelines[n].other_languages_topic] if t}
        more = {n for n, p in all_pipelines.items() if p.input in routed} - needed
        if not more:
            return {n: p for n, p in all_pipelines.items() if n in needed}
        needed |= more


def check_models(pipelines: Mapping[str, Pipeline], model_dir: Path | None) -> None:
    """Fail early, with the fix, when an encoder is not built or a head is missing."""
    from pipelines.registry import ModelNotFoundError, resolve_head_dir, resolve_model_dir

    for name, pipeline in pipelines.items():
        try:
            resolve_model_dir(pipeline.model or model_dir)
            for head in pipeline.model_heads:
                resolve_head_dir(head)
        except ModelNotFoundError as exc:
            raise click.ClickException(f"pipeline {name!r}: {exc}") from None


def _fed_id(dead_letter: dict[str, Any]) -> str | None:
    """The id of the event a dead letter was, when its raw bytes are a JSON object with one."""
    if dead_letter.get("raw_encoding", "utf-8") != "utf-8":
        return None
    try:
        raw = json.loads(dead_letter.get("raw") or "")
    except json.JSONDecodeError:
        return None
    return raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None


def _run_pass(
    settings: Any,
    pipelines: dict[str, Pipeline],
    feed: dict[str, list[bytes]],
    expected_ids: set[str],
    expected_dead: int,
    label: str,
    timeout_s: float = 600,
) -> PassResult:
    """Produce the feed, then read outputs until every expected id and malformed record has come back.

    Reads the pipelines' output topics from the start, except those that are another pipeline's input
    (events routed on for their language come back from that pipeline), and keeps only this pass's
    events: by id, and by source offset for the malformed records. The embedded broker's "latest"
    offset is not exact.
    """
    inputs = {p.input for p in pipelines.values()}
    topics = sorted({t for p in pipelines.values() for t in p.output_topics} - inputs)
    dead_topics = {p.dead_letter for p in pipelines.values()}
    result = PassResult()
    done: set[str] = set()  # ids with an output or a dead letter
    malformed = 0
    consumer = make_consumer(settings, topics, from_beginning=True)
    pending = []  # join the group before the clock starts
    while not consumer.assignment():
        pending += [r for rs in consumer.poll(timeout_ms=200).values() for r in rs]
    producer = make_producer(settings)
    started = time.monotonic()
    futures = [producer.send(pipelines[name].input, value) for name, values in feed.items() for value in values]
    producer.flush()
    producer.close()
    sources = {(m.topic, m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)}
    with tqdm(total=len(expected_ids) + expected_dead, desc=label, unit="ev") as bar:
        while len(done) < len(expected_ids) or malformed < expected_dead:
            if time.monotonic() - started > timeout_s:
                break
            polled = [(r.topic, r) for rs in consumer.poll(timeout_ms=500).values() for r in rs]
            polled += [(r.topic, r) for r in pending]
            pending = []
            for topic, record in polled:
                doc = {**json.loads(record.value), "topic": topic}
                if topic in dead_topics:
                    src = doc["source"]
                    fed_id = _fed_id(doc)
                    if fed_id in expected_ids and fed_id not in done:
                        result.dead_letters.append({**doc, "id": fed_id})
                        done.add(fed_id)
                        bar.update()
                    elif (src["topic"], src["partition"], src["offset"]) in sources and fed_id not in expected_ids:
                        result.dead_letters.append(doc)
                        malformed += 1
                        bar.update()
                elif doc["id"] in expected_ids and doc["id"] not in done:
                    result.outputs[doc["id"]] = doc
                    done.add(doc["id"])
                    bar.update()
    result.seconds = time.monotonic() - started
    consumer.close()
    return result


def run_demo(events: int = 300, rows: int = 12) -> None:
    run = uuid.uuid4().hex[:6]
    groups = demo_groups(events)
    malformed = [line.encode() for line in (DEMO_DATA / "malformed.txt").read_text().splitlines() if line.strip()]
    malformed_to = ["news", "email"]
    with ExitStack() as stack:
        settings = load_settings()
        pipelines = pipelines_to_run(load_pipelines(settings.pipelines_file), {g.pipeline for g in groups})
        check_models(pipelines, settings.model_dir)
        kafka, redis_url, _ = services(stack, echo=lambda message: click.echo(message, err=True))
        brokers = kafka.bootstrap
        web_port = free_port()
        env = worker_env(brokers, redis_url, f"bertstream-demo-{run}", web_port)
        settings = load_settings(kafka_brokers=brokers, redis_url=redis_url)
        log_path = Path(tempfile.mkdtemp(prefix="bertstream-demo-")) / "worker.log"
        click.echo(f"starting a worker for the {', '.join(pipelines)} pipelines (log: {log_path})…", err=True)
        with tqdm(desc="starting worker (models load, group join)", bar_format="{desc}: {elapsed}", leave=False) as bar:
            try:
                proc = start_ready_worker(stack, env, list(pipelines), log_path, web_port, tick=bar.update)
            except WorkerStartError as exc:
                raise click.ClickException(str(exc)) from None

        def event_id(e: dict[str, Any], suffix: str, i: int) -> str:
            return f"{e['id']}-{run}-{suffix}-{i}"

        def feed(suffix: str, with_bad: bool) -> dict[str, list[bytes]]:
            out: dict[str, list[bytes]] = {}
            for g in groups:
                values = [json.dumps({**e, "id": event_id(e, suffix, i)}).encode() for i, e in enumerate(g.events)]
                out.setdefault(g.pipeline, []).extend(values)
            for name in malformed_to if with_bad else []:
                out[name].extend(malformed)
            return out

        def fed(suffix: str) -> dict[str, str]:
            return {event_id(e, suffix, i): g.pipeline for g in groups for i, e in enumerate(g.events)}

        total = sum(len(g.events) for g in groups)
        first = _run_pass(
            settings,
            pipelines,
            feed("a", True),
            set(fed("a")),
            len(malformed) * len(malformed_to),
            "pass 1 (cold cache)",
        )
        second = _run_pass(settings, pipelines, feed("b", False), set(fed("b")), 0, "pass 2 (same texts)")
        peak_mb = peak_rss_mb(proc.pid)
        _print_tables(groups, pipelines, first, lambda e, i: event_id(e, "a", i), rows)

        counts = tables.topic_counts(
            pipelines, fed("a"), {n: len(malformed) for n in malformed_to}, first.outputs, first.dead_letters
        )
        errors = sorted({d["error"] for d in first.dead_letters})
        click.echo("\nsummary, pass 1: events in and out per pipeline and topic")
        tables.echo(tables.summary_table(pipelines, counts))
        memory = f"; worker peak memory {peak_mb / 1024:.1f} GiB" if peak_mb else ""
        click.echo(
            f"events in {total + len(malformed) * len(malformed_to)} ({total} events, "
            f"{len(malformed) * len(malformed_to)} malformed); dead letters {len(first.dead_letters)} "
            f"({', '.join(errors)}); pass 1 {total / first.seconds:.0f} events/s cold; "
            f"pass 2 cache hits {second.cached}/{len(second.outputs)}, {len(second.outputs) / second.seconds:.0f} "
            f"events/s{memory}"
        )
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        missing = total - len(first.outputs)
        if missing or len(second.outputs) < total:
            raise click.ClickException(
                f"{missing} events of pass 1 and {total - len(second.outputs)} of pass 2 got no output"
            )


def _print_tables(
    groups: list[Group],
    pipelines: dict[str, Pipeline],
    result: PassResult,
    event_id: Callable[[dict[str, Any], int], str],
    rows: int,
) -> None:
    """The English pipelines' results; the Chinese texts (and any English-pipeline event passed on
    for its language) with what the multilingual pipeline said; the support questions' answers."""
    english, support, other_languages = [], [], []
    for g in groups:
        pipeline = pipelines[g.pipeline]
        found = [(e, out) for i, e in enumerate(g.events) if (out := result.outputs.get(event_id(e, i)))]
        if g.name in ("news", "email"):
            title = f"{g.name}: {pipeline.input} → {pipeline.output}"
            english += tables.results_table(
                title, [(tables.event_text(e, o), o) for e, o in found[:rows]], pipeline, pipelines
            )
            found = [(e, o) for e, o in found if tables.producer_of(o, pipelines) != g.pipeline]  # passed on
        if pipeline.answers is not None:
            title = (
                f"{g.name}: {pipeline.input} → {pipeline.output}, no answer → {pipeline.unanswered or pipeline.output}"
            )
            support += tables.support_table(
                title, [(e["text"], o, (e.get("metadata") or {}).get("expected")) for e, o in found], pipeline
            )
        else:
            other_languages += [
                (tables.event_text(e, o), pipeline.input, o, (e.get("metadata") or {}).get("tone", ""))
                for e, o in found
            ]
    tables.echo(english)
    if other_languages:
        routes = sorted({p.other_languages_topic for p in pipelines.values() if p.other_languages_topic})
        title = f"other languages, passed on to {', '.join(routes)}: language, vocabulary coverage, sentiment"
        tables.echo(tables.languages_table(title, other_languages))
    tables.echo(support)
