"""The demo's feed, the pipelines it starts, and its tables and summary, on hand-made outputs (no
services, no model: `make demo` itself runs them for real)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import click
import pytest

from bertstream.demo import DATA, tables
from bertstream.demo.run import _fed_id, check_models, demo_groups, pipelines_to_run
from worker.config import DEFAULT_PIPELINES_FILE, Pipeline, load_pipelines

PIPELINES = load_pipelines(DEFAULT_PIPELINES_FILE)


def _width(text: str) -> int:
    return sum(map(tables._columns, text))


def test_the_feed_has_english_chinese_and_support_groups_for_the_default_pipelines() -> None:
    groups = {g.name: g for g in demo_groups(300)}
    assert [(g.pipeline, len(g.events)) for g in groups.values()] == [
        ("news", 150),
        ("email", 150),
        ("news", 6),
        ("email", 4),
        ("support", 16),
    ]
    assert [e.get("email") or e.get("email_b64") for e in groups["email"].events[:4]], "raw MIME messages first"
    assert {g.pipeline for g in groups.values()} <= set(PIPELINES)
    base_ids = [e["id"] for g in groups.values() for e in g.events if g.name not in ("news", "email")]
    assert len(base_ids) == len(set(base_ids))
    for name in ("news_zh", "email_zh"):
        tones = Counter(e["metadata"]["tone"] for e in groups[name].events)
        assert set(tones) == {"positive", "negative", "neutral"}, tones
        assert all(e["metadata"]["lang"] == "zh" for e in groups[name].events)


def test_support_questions_are_meant_for_entries_of_the_default_knowledge_base() -> None:
    kb = PIPELINES["support"].answers
    assert kb is not None
    ids = {json.loads(line)["id"] for line in kb.read_text().splitlines() if line.strip()}
    questions = [json.loads(line) for line in (DATA / "support_questions.jsonl").read_text().splitlines()]
    by_kind = Counter((q["metadata"]["lang"], q["metadata"]["expected"] is not None) for q in questions)
    assert by_kind == {("en", True): 6, ("zh", True): 7, ("en", False): 2, ("zh", False): 1}
    assert {q["metadata"]["expected"] for q in questions} - {None} <= ids
    evaluated = {json.loads(line)["question"] for line in (DATA / "support_eval.jsonl").read_text().splitlines()}
    assert not evaluated & {q["text"] for q in questions}, "demo questions are not the calibration set's"


def test_the_worker_runs_the_fed_pipelines_and_those_they_route_to() -> None:
    assert list(pipelines_to_run(PIPELINES, {"news", "email", "support"})) == [
        "news",
        "email",
        "multilingual",
        "support",
    ]
    assert list(pipelines_to_run(PIPELINES, {"support"})) == ["support"]


def test_a_missing_head_stops_the_demo_before_anything_starts() -> None:
    broken = {"news": Pipeline(name="news", input="a", output="b", dead_letter="c", heads=["no-such-head"])}
    with pytest.raises(click.ClickException, match="pipeline 'news': head 'no-such-head' not found"):
        check_models(broken, None)


def test_dead_letters_name_the_fed_event_they_were() -> None:
    assert _fed_id({"raw": '{"id": "q-1-a", "text": ""}', "raw_encoding": "utf-8"}) == "q-1-a"
    assert _fed_id({"raw": '{"text": "unterminated', "raw_encoding": "utf-8"}) is None
    assert _fed_id({"raw": "eyJpZCI6ICJ4In0=", "raw_encoding": "base64"}) is None


def _out(event_id: str, topic: str, source: str, **extra: Any) -> dict[str, Any]:
    results = {"sentiment": {"label": "positive", "score": 0.9}}
    return {"id": event_id, "topic": topic, "source": {"topic": source}, "results": results, "cached": False} | extra


def test_counts_follow_events_routed_on_to_another_pipeline() -> None:
    fed = {"n1": "news", "n2": "news", "z1": "news", "q1": "support", "q2": "support"}
    outputs = {
        "n1": _out("n1", "news.enriched", "news.raw"),
        "n2": _out("n2", "news.enriched", "news.raw"),
        "z1": _out("z1", "multilingual.enriched", "multilingual.raw"),
        "q1": _out("q1", "support.answers", "support.questions"),
        "q2": _out("q2", "support.unanswered", "support.questions"),
    }
    dead = [{"topic": "news.dead-letter", "source": {"topic": "news.raw"}}]
    counts = tables.topic_counts(PIPELINES, fed, {"news": 1}, outputs, dead)
    assert counts["news"] == (4, Counter({"news.enriched": 2, "multilingual.raw": 1, "news.dead-letter": 1}))
    assert counts["multilingual"] == (1, Counter({"multilingual.enriched": 1}))
    assert counts["support"] == (2, Counter({"support.answers": 1, "support.unanswered": 1}))
    assert counts["email"] == (0, Counter())
    lines = tables.summary_table(PIPELINES, counts)
    [news] = [line for line in lines if line.startswith("news ")]
    assert news.index("news.enriched 2") < news.index("multilingual.raw 1 (routed on)") < news.index("news.dead-letter")


def test_support_table_shows_answers_abstentions_and_aligns_chinese() -> None:
    support = PIPELINES["support"]
    answer = {"id": "store-pickup", "score": 0.9092, "question": "Do you have click and collect?"}
    zh = {"code": "zh", "confidence": 0.99, "coverage": 1.0}
    rows = [
        (
            "你们有 click and collect 服务吗？",
            _out("q1", "support.answers", "x", answer=answer, language=zh),
            "store-pickup",
        ),
        ("周末去哪里玩比较好？", _out("q2", "support.unanswered", "x", answer=None, language=zh), None),
        ("Where is my parcel?", _out("q3", "support.unanswered", "x", answer=None, language=zh), "order-status"),
    ]
    lines = tables.support_table("support", rows, support)
    body = lines[3:]
    assert "store-pickup (0.91)" in body[0] and "Do you have click and collect?" in body[0]
    assert "no answer → support.unanswered" in body[1] and body[1].endswith("yes")
    assert body[2].endswith("no (order-status)")
    for line in body:  # the answer column starts at the same terminal column whatever the script
        start = line.index("store-pickup") if "store-pickup" in line else line.index("no answer")
        assert _width(line[:start]) == 46 + 2 + 4 + 2


def test_languages_table_says_where_each_text_came_out() -> None:
    out = _out(
        "z1", "multilingual.enriched", "multilingual.raw", language={"code": "zh", "confidence": 0.97, "coverage": 1.0}
    )
    [_, _, _, row] = tables.languages_table("other", [("连日暴雨导致山区多条公路中断", "news.raw", out, "negative")])
    assert "news.raw" in row and "multilingual.enriched" in row and "zh 0.97" in row
    assert "positive (0.90)" in row and row.rstrip().endswith("negative    no")


def test_results_table_marks_events_another_pipeline_answered() -> None:
    routed = _out("e1", "multilingual.enriched", "multilingual.raw", language={"code": "fr"})
    mine = _out("e2", "email.classified", "email.raw", language={"code": "en"})
    lines = tables.results_table("email", [("Bonjour", routed), ("Hello", mine)], PIPELINES["email"], PIPELINES)
    assert "[multilingual, fr] sentiment=positive (0.90)" in lines[-2]
    assert "[" not in lines[-1] and "sentiment=positive (0.90)" in lines[-1]
