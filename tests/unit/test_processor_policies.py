"""What a pipeline does beyond its heads: languages it does not serve, questions with no answer,
embeddings out, and the language and coverage every output carries. A fake model, no services;
the language detector is the real one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pipelines.model import Prediction
from worker.cache import ResultCache
from worker.codec import Source
from worker.config import Pipeline
from worker.model_pool import ModelPool
from worker.processor import LANGUAGE_SURE, UNSUPPORTED_LANGUAGE, BatchProcessor, Found, Outgoing, Record

EN = "The parcel arrived two days late and the box was damaged."
ZH = "包裹晚到了两天，而且盒子也坏了。"


class AnsweringModel:
    """One head (tone) and a one-entry knowledge base: texts with "refund" have an answer."""

    name = "fake"
    instances = 1

    def __init__(self) -> None:
        self.seen: list[str] = []

    @property
    def labels(self) -> dict[str, list[str]]:
        return {"tone": ["calm", "upset"]}

    def version(self, tasks: list[str] | None = None) -> str:
        return "answers-1"

    def describe(self) -> dict[str, str]:
        return {"device": "none"}

    def prepare(self, texts: list[str]) -> list[str]:
        return list(texts)

    def run(self, prepared: list[str], tasks: list[str] | None = None) -> list[Prediction]:
        self.seen += prepared
        out = []
        for text in prepared:
            answer = {"id": "refunds", "text": "Refunds take 5 days.", "score": 0.9, "question": "refund?"}
            extra: dict[str, Any] = {
                "answer": answer if "refund" in text else None,
                "candidates": [{"id": "refunds", "score": 0.9 if "refund" in text else 0.2}],
                "embedding": [0.6, 0.8],
            }
            tone = {"label": "calm", "score": 1.0, "scores": {"calm": 1.0, "upset": 0.0}}
            out.append(Prediction({"tone": tone}, False, coverage=0.5, extra=extra))
        return out

    def warm_up(self) -> None:
        pass


def _pipeline(**options: Any) -> Pipeline:
    return Pipeline(name="p", input="in", output="out", dead_letter="dead", heads=["tone"], **options)


def _process(pipeline: Pipeline, texts: list[str], model: AnsweringModel | None = None) -> list[Outgoing | None]:
    async def scenario() -> list[Outgoing | None]:
        pool = ModelPool(1, [pipeline.name])
        await pool.acquire(pipeline.name)
        processor = BatchProcessor(pipeline, model or AnsweringModel(), ResultCache(None, 0), pool)
        records = [
            Record(json.dumps({"text": t}).encode(), f"k{i}".encode(), Source("in", 0, i)) for i, t in enumerate(texts)
        ]
        try:
            return await processor.process(records)
        finally:
            pool.shutdown()

    return asyncio.run(scenario())


def test_every_output_says_its_language_and_how_much_the_encoder_read() -> None:
    en, zh = _process(_pipeline(), [EN, ZH])
    assert en is not None and zh is not None
    doc_en, doc_zh = json.loads(en.value), json.loads(zh.value)
    assert doc_en["language"]["code"] == "en" and doc_zh["language"]["code"] == "zh"
    assert 0.0 < doc_zh["language"]["confidence"] <= 1.0
    assert doc_en["language"]["coverage"] == 0.5  # the model's share of known tokens


def test_other_languages_are_routed_as_they_came() -> None:
    model = AnsweringModel()
    pipeline = _pipeline(languages=["en"], other_languages="route", other_languages_topic="other")
    en, zh = _process(pipeline, [EN, ZH], model)
    assert en is not None and en.topic == "out"
    assert zh is not None and zh.topic == "other" and zh.key == b"k1"
    assert json.loads(zh.value) == {"text": ZH}  # the original record, untouched
    assert model.seen == [EN]  # the English model never saw the Chinese text


def test_other_languages_can_be_dead_lettered() -> None:
    pipeline = _pipeline(languages=["en"], other_languages="dead_letter")
    en, zh = _process(pipeline, [EN, ZH])
    assert en is not None and not en.dead_letter
    assert zh is not None and zh.dead_letter and zh.topic == "dead"
    letter = json.loads(zh.value)
    assert letter["error"] == UNSUPPORTED_LANGUAGE and "'zh'" in letter["detail"]
    assert json.loads(letter["raw"]) == {"text": ZH}


def test_other_languages_can_be_processed_anyway() -> None:
    pipeline = _pipeline(languages=["en"], other_languages="process")
    outputs = _process(pipeline, [EN, ZH])
    assert [o.topic for o in outputs if o is not None] == ["out", "out"]


def test_text_with_no_language_or_an_unsure_one_is_served() -> None:
    pipeline = _pipeline(languages=["en"], other_languages="dead_letter")
    none, unsure = _process(pipeline, ["12345 678", "FYI"])
    assert none is not None and not none.dead_letter
    assert json.loads(none.value)["language"]["code"] == "und"
    assert unsure is not None and not unsure.dead_letter
    assert json.loads(unsure.value)["language"]["confidence"] < LANGUAGE_SURE


def test_questions_with_no_answer_go_to_the_unanswered_topic() -> None:
    pipeline = Pipeline(
        name="support",
        input="q",
        output="answers",
        dead_letter="dead",
        answers="kb.jsonl",
        unanswered="humans",
        embedding=True,
    )
    answered, unanswered = _process(pipeline, ["How do I get a refund?", "What is the meaning of life?"])
    assert answered is not None and answered.topic == "answers"
    assert unanswered is not None and unanswered.topic == "humans"
    doc = json.loads(answered.value)
    assert doc["answer"]["id"] == "refunds" and doc["candidates"][0]["id"] == "refunds"
    assert doc["embedding"] == [0.6, 0.8]
    assert list(doc)[-2:] == ["embedding", "metadata"]  # the big field last, before the caller's metadata
    assert json.loads(unanswered.value)["answer"] is None


def test_a_cached_answer_without_the_fields_this_pipeline_writes_is_a_miss() -> None:
    pipeline = _pipeline(embedding=True)
    processor = BatchProcessor(pipeline, AnsweringModel(), ResultCache(None, 0), ModelPool(1, ["p"]))
    tone = {"tone": {"label": "calm", "score": 1.0, "scores": {"calm": 1.0, "upset": 0.0}}}
    loaded = processor.loaded
    assert processor._usable({"results": tone, "truncated": False, "coverage": 1.0, "extra": {"embedding": []}}, loaded)
    assert not processor._usable({"results": tone, "truncated": False, "coverage": 1.0, "extra": {}}, loaded)
    assert not processor._usable({"results": tone, "truncated": False}, loaded)  # written before coverage existed
    assert Found(tone, False, True).coverage == 1.0
    processor.pool.shutdown()
