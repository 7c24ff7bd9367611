"""The demo's printed tables and summary: pure functions of the events that came back."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Mapping
from typing import Any

import click

from worker.config import Pipeline


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


def _row(cells: list[tuple[str, int]]) -> str:
    return "  ".join(_cell(text, width) for text, width in cells).rstrip()


def producer_of(doc: dict[str, Any], pipelines: Mapping[str, Pipeline]) -> str | None:
    """The pipeline that wrote an output or dead letter: the one reading its source topic."""
    source = doc.get("source", {}).get("topic")
    return next((name for name, p in pipelines.items() if p.input == source), None)


def event_text(event: dict[str, Any], out: dict[str, Any] | None = None) -> str:
    """What a row shows of an input event: its text, or the subject of a raw e-mail message."""
    if event.get("text"):
        return event["text"]
    subject = ((out or {}).get("email") or {}).get("subject") or "(raw e-mail message)"
    return f"✉ {subject}"


def _labels(results: dict[str, Any]) -> str:
    return ", ".join(
        f"{'topic' if task.endswith('_topic') else task}={_short(r['label'], 24)} ({r['score']:.2f})"
        for task, r in results.items()
    )


def results_table(
    title: str, rows: list[tuple[str, dict[str, Any]]], pipeline: Pipeline, pipelines: Mapping[str, Pipeline]
) -> list[str]:
    """Text, labels and cache state of a pipeline's events; an event that another pipeline answered
    (routed on for its language) says which."""
    lines = [f"\n{title}", _row([("text", 48), ("labels (score)", 84), ("cached", 6)]), "-" * 142]
    for text, out in rows:
        labels = _labels(out["results"])
        producer = producer_of(out, pipelines)
        if producer and producer != pipeline.name:
            labels = f"[{producer}, {out['language']['code']}] {labels}"
        lines.append(_row([(text, 48), (labels, 84), ("yes" if out["cached"] else "no", 6)]))
    return lines


def languages_table(title: str, rows: list[tuple[str, str, dict[str, Any], str]]) -> list[str]:
    """(text, topic it was fed to, output, tone it was written in) of events another pipeline answered."""
    head = [("text", 46), ("fed to", 10), ("came out on", 21), ("language", 10), ("coverage", 8)]
    head += [("sentiment (score)", 20), ("written as", 10), ("cached", 6)]
    lines = [f"\n{title}", _row(head), "-" * 145]
    for text, fed_to, out, tone in rows:
        language = out.get("language") or {}
        sentiment = out["results"].get("sentiment")
        cells = [
            (text, 46),
            (fed_to, 10),
            (out["topic"], 21),
            (f"{language.get('code', '?')} {language.get('confidence', 0):.2f}", 10),
            (f"{language.get('coverage', 0):.2f}", 8),
            (f"{sentiment['label']} ({sentiment['score']:.2f})" if sentiment else "-", 20),
            (tone or "-", 10),
            ("yes" if out["cached"] else "no", 6),
        ]
        lines.append(_row(cells))
    return lines


def answer_cell(out: dict[str, Any], unanswered_topic: str | None) -> str:
    answer = out.get("answer")
    if answer is None:
        return f"no answer → {unanswered_topic or out['topic']}"
    return f"{answer['id']} ({answer['score']:.2f})"


def support_table(title: str, rows: list[tuple[str, dict[str, Any], str | None]], pipeline: Pipeline) -> list[str]:
    """(question, output, the entry the question was written for: None for out of scope) per question."""
    head = [("question", 46), ("lang", 4), ("answer (score)", 30), ("matched phrasing", 36), ("as meant", 22)]
    lines = [f"\n{title}", _row(head), "-" * 146]
    for question, out, expected in rows:
        answer = out.get("answer")
        got = answer["id"] if answer else None
        cells = [
            (question, 46),
            ((out.get("language") or {}).get("code", "?"), 4),
            (answer_cell(out, pipeline.unanswered), 30),
            (answer.get("question", "") if answer else "-", 36),
            ("yes" if got == expected else f"no ({expected or 'none'})", 22),
        ]
        lines.append(_row(cells))
    return lines


def topic_counts(
    pipelines: Mapping[str, Pipeline],
    fed: Mapping[str, str],
    malformed: Mapping[str, int],
    outputs: Mapping[str, dict[str, Any]],
    dead_letters: list[dict[str, Any]],
) -> dict[str, tuple[int, Counter[str]]]:
    """Per pipeline: (events in, events out per topic).

    `fed` maps each fed event id to the pipeline it was fed to, `malformed` counts the malformed
    records fed to each; every output and dead letter carries the topic it came back on ("topic")
    and dead letters the id of the fed event they were, when they were one ("id"). An event that one
    pipeline routed to another's input counts out of the first (on the routed topic) and in and out
    of the second.
    """
    ins: Counter[str] = Counter(fed.values())
    ins.update(malformed)
    outs: dict[str, Counter[str]] = {name: Counter() for name in pipelines}
    for doc in [*outputs.values(), *dead_letters]:
        producer = producer_of(doc, pipelines)
        if producer is None:
            continue
        outs[producer][doc["topic"]] += 1
        origin = fed.get(doc.get("id") or "")
        if origin and origin != producer:  # routed on: out of the pipeline it was fed to, into this one
            outs[origin][pipelines[producer].input] += 1
            ins[producer] += 1
    return {name: (ins[name], outs[name]) for name in pipelines}


def summary_table(pipelines: Mapping[str, Pipeline], counts: Mapping[str, tuple[int, Counter[str]]]) -> list[str]:
    lines = [_row([("pipeline", 12), ("input", 18), ("in", 5), ("out, per topic", 100)])]
    for name, (count_in, count_out) in counts.items():
        pipeline = pipelines[name]
        # Where events are meant to go first, then routed on, then dead letters.
        topics = [pipeline.output, *(r.topic for r in pipeline.routes), pipeline.unanswered]
        order = {t: i for i, t in enumerate([*topics, pipeline.other_languages_topic, pipeline.dead_letter]) if t}
        parts = []
        for topic, n in sorted(count_out.items(), key=lambda item: order.get(item[0], len(order))):
            routed = topic == pipeline.other_languages_topic
            parts.append(f"{topic} {n}{' (routed on)' if routed else ''}")
        lines.append(_row([(name, 12), (pipeline.input, 18), (str(count_in), 5), (" · ".join(parts) or "-", 100)]))
    return lines


def echo(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)
