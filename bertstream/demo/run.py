"""`bertstream demo`: the whole path on embedded defaults, with a readable result table."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
import unicodedata
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from bertstream.demo import DATA as DEMO_DATA
from bertstream.devservices.process import free_port
from bertstream.devservices.stack import services, start_ready_worker, worker_env
from bertstream.devservices.worker_process import WorkerStartError
from bertstream.feed import make_consumer, make_producer
from worker.config import Pipeline, load_pipelines, load_settings


@dataclass
class PassResult:
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> output event
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def cached(self) -> int:
        return sum(1 for o in self.outputs.values() if o["cached"])


MIME_EVENTS = 4  # the raw e-mail messages of email_mime.jsonl


def _load_events(name: str, count: int) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (DEMO_DATA / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    return [lines[i % len(lines)] for i in range(count)]


def _run_pass(
    settings: Any,
    pipelines: dict[str, Pipeline],
    feed: dict[str, list[bytes]],
    expected_ids: set[str],
    expected_dead: int,
    label: str,
    timeout_s: float = 600,
) -> PassResult:
    """Produce the feed, then read outputs until every expected id and dead letter has come back.

    Reads the output topics from the start and keeps only this pass's events (by id, and by
    source offset for dead letters): the embedded broker's "latest" offset is not exact.
    """
    topics = sorted({t for p in pipelines.values() for t in p.output_topics})
    dead_topics = {p.dead_letter for p in pipelines.values()}
    result = PassResult()
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
        while len(result.outputs) + len(result.dead_letters) < len(expected_ids) + expected_dead:
            if time.monotonic() - started > timeout_s:
                break
            polled = [(r.topic, r) for rs in consumer.poll(timeout_ms=500).values() for r in rs]
            polled += [(r.topic, r) for r in pending]
            pending = []
            for topic, record in polled:
                doc = json.loads(record.value)
                if topic in dead_topics:
                    src = doc["source"]
                    if (src["topic"], src["partition"], src["offset"]) in sources:
                        result.dead_letters.append(doc)
                        bar.update()
                elif doc["id"] in expected_ids and doc["id"] not in result.outputs:
                    result.outputs[doc["id"]] = {**doc, "topic": topic}
                    bar.update()
    result.seconds = time.monotonic() - started
    consumer.close()
    return result


def _columns(ch: str) -> int:
    """Terminal columns of a character: CJK and other wide characters take two."""
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def _short(text: str, width: int) -> str:
    """The text on one line, cut to `width` terminal columns."""
    text = " ".join(text.split())
    if sum(map(_columns, text)) <= width:
        return text
    used = 0
    for end, ch in enumerate(text):  # keep what fits in width - 1 columns, then the ellipsis
        used += _columns(ch)
        if used > width - 1:
            return text[:end] + "…"
    return text


def _cell(text: str, width: int) -> str:
    """A table cell: cut, then padded to exactly `width` columns (a CJK character takes two)."""
    text = _short(text, width)
    return text + " " * (width - sum(map(_columns, text)))


def _print_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    click.echo(f"\n{title}")
    click.echo(f"{'text':<48}  {'labels (score)':<84}  cached")
    click.echo("-" * 142)
    for text, out in rows:
        labels = ", ".join(
            f"{'topic' if task.endswith('_topic') else task}={_short(r['label'], 24)} ({r['score']:.2f})"
            for task, r in out["results"].items()
        )
        click.echo(f"{_cell(text, 48)}  {_cell(labels, 84)}  {'yes' if out['cached'] else 'no'}")


def run_demo(events: int = 300, rows: int = 12) -> None:
    run = uuid.uuid4().hex[:6]
    half = max(1, events // 2)
    mime = _load_events("email_mime", min(MIME_EVENTS, events - half))  # raw MIME messages first
    batches = {"news": _load_events("news", half), "email": mime + _load_events("email", events - half - len(mime))}
    malformed = [line.encode() for line in (DEMO_DATA / "malformed.txt").read_text().splitlines() if line.strip()]
    with ExitStack() as stack:
        kafka, redis_url, _ = services(stack, echo=lambda message: click.echo(message, err=True))
        brokers = kafka.bootstrap
        web_port = free_port()
        env = worker_env(brokers, redis_url, f"bertstream-demo-{run}", web_port)
        settings = load_settings(kafka_brokers=brokers, redis_url=redis_url)
        pipelines = {n: p for n, p in load_pipelines(settings.pipelines_file).items() if n in batches}
        log_path = Path(tempfile.mkdtemp(prefix="bertstream-demo-")) / "worker.log"
        click.echo(f"starting a worker for the news and email pipelines (log: {log_path})…", err=True)
        with tqdm(desc="starting worker (model load, group join)", bar_format="{desc}: {elapsed}", leave=False) as bar:
            try:
                proc = start_ready_worker(stack, env, list(batches), log_path, web_port, tick=bar.update)
            except WorkerStartError as exc:
                raise click.ClickException(str(exc)) from None

        def event_id(e: dict[str, Any], suffix: str, i: int) -> str:
            return f"{e['id']}-{run}-{suffix}-{i}"

        def feed(suffix: str, with_bad: bool) -> dict[str, list[bytes]]:
            out = {}
            for name, evs in batches.items():
                values = [json.dumps({**e, "id": event_id(e, suffix, i)}).encode() for i, e in enumerate(evs)]
                out[name] = values + (malformed if with_bad else [])
            return out

        def ids(suffix: str) -> set[str]:
            return {event_id(e, suffix, i) for evs in batches.values() for i, e in enumerate(evs)}

        total = sum(len(v) for v in batches.values())
        first = _run_pass(
            settings, pipelines, feed("a", True), ids("a"), len(malformed) * len(batches), "pass 1 (cold cache)"
        )
        second = _run_pass(settings, pipelines, feed("b", False), ids("b"), 0, "pass 2 (same texts)")

        for name, evs in batches.items():
            table = []
            for i, e in enumerate(evs[:rows]):
                out = first.outputs.get(event_id(e, "a", i))
                if out:
                    table.append((e.get("text") or f"✉ {out['email']['subject']}", out))
            _print_table(f"{name}: {pipelines[name].input} → {pipelines[name].output}", table)
        errors = sorted({d["error"] for d in first.dead_letters})
        spam = sum(1 for o in first.outputs.values() if o["topic"] == "email.spam")
        click.echo(
            f"\nsummary: events in {total + len(malformed) * len(batches)}, out {len(first.outputs)} "
            f"({spam} routed to email.spam), dead letters {len(first.dead_letters)} ({', '.join(errors)}), "
            f"pass 1 {total / first.seconds:.0f} events/s cold; pass 2 cache hits {second.cached}/{len(second.outputs)}, "
            f"{len(second.outputs) / second.seconds:.0f} events/s"
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
