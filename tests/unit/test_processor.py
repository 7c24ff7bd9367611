"""The batch processor against a fake model: no torch, no Redis (the cache is off). The same
paths with the real model and a real Redis are in tests/integration/test_processor_redis.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

from pipelines.model import Prediction
from worker.cache import ResultCache
from worker.codec import Source
from worker.config import Pipeline, Route
from worker.model_pool import ModelPool
from worker.processor import BatchProcessor, Outgoing, Record

LABELS = ["ham", "spam"]


class FakeModel:
    """Says spam when the text has "win"; fails on any batch that holds "POISON"."""

    name = "fake"

    def __init__(self, instances: int = 1) -> None:
        self.instances = instances
        self.runs: list[list[str]] = []
        self.lock = threading.Lock()

    @property
    def labels(self) -> dict[str, list[str]]:
        return {"spam": LABELS}

    def version(self, tasks: list[str] | None = None) -> str:
        return "fake-1"

    def describe(self) -> dict[str, str]:
        return {"device": "none"}

    def prepare(self, texts: list[str]) -> list[str]:
        return list(texts)

    def run(self, prepared: list[str], tasks: list[str] | None = None) -> list[Prediction]:
        with self.lock:
            self.runs.append(prepared)
        if any("POISON" in t for t in prepared):
            raise RuntimeError("poisoned")
        out = []
        for text in prepared:
            p = 0.9 if "win" in text else 0.1
            label = LABELS[int(p > 0.5)]
            out.append(
                Prediction(
                    {"spam": {"label": label, "score": max(p, 1 - p), "scores": {"ham": 1 - p, "spam": p}}}, False
                )
            )
        return out

    def warm_up(self) -> None:
        pass


PIPELINE = Pipeline(
    name="mail",
    input="in",
    output="out",
    dead_letter="dead",
    heads=["spam"],
    routes=[Route(head="spam", label="spam", topic="out.spam")],
)


def process(values: list[bytes], model: FakeModel, pool: ModelPool, hold: int = 1) -> list[Outgoing]:
    async def scenario() -> list[Outgoing]:
        for _ in range(hold):  # the agent holds one instance per batch it passes on
            await pool.acquire(PIPELINE.name)
        processor = BatchProcessor(PIPELINE, model, ResultCache(None, 0), pool)
        records = [Record(raw=v, key=None, source=Source("in", 0, i)) for i, v in enumerate(values)]
        return await processor.process(records)

    try:
        return asyncio.run(scenario())
    finally:
        pool.shutdown()


def event(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def test_outputs_routes_and_dead_letters_keep_input_order() -> None:
    model = FakeModel()
    out = process(
        [event("win a prize"), b"{not json", event("lunch at noon"), event("POISON pill")], model, ModelPool(1)
    )
    assert [o.topic for o in out] == ["out.spam", "dead", "out", "dead"]
    docs = [json.loads(o.value) for o in out]
    assert docs[0]["results"]["spam"]["label"] == "spam" and docs[2]["results"]["spam"]["label"] == "ham"
    assert docs[1]["error"] == "invalid_json" and docs[3]["error"] == "model_error"
    assert [d["source"]["offset"] for d in docs] == [0, 1, 2, 3]
    assert docs[0]["model"] == {"name": "fake", "version": "fake-1"}
    # The poisoned batch was retried text by text: the others were classified.
    assert ["win a prize", "lunch at noon", "POISON pill"] in model.runs and ["POISON pill"] in model.runs


def test_a_batch_is_split_across_idle_instances() -> None:
    model = FakeModel(instances=2)
    texts = [f"message {i}" for i in range(20)]
    out = process([event(t) for t in texts], model, ModelPool(2, [PIPELINE.name]))
    assert sorted(map(len, model.runs)) == [10, 10]
    assert [json.loads(o.value)["source"]["offset"] for o in out] == list(range(20))


def test_busy_instances_take_the_batch_whole() -> None:
    model = FakeModel(instances=2)
    process([event(f"message {i}") for i in range(20)], model, ModelPool(2, [PIPELINE.name]), hold=2)
    assert [len(r) for r in model.runs] == [20]


def test_the_streaming_path_needs_no_torch() -> None:
    code = (
        "import sys; sys.path.insert(0, '.'); import tests.unit.test_processor as t; "
        "t.test_outputs_routes_and_dead_letters_keep_input_order(); print('torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "False"  # the last line; the log comes before it


def test_a_poison_field_dead_letters_its_event_alone() -> None:
    """A lone surrogate anywhere (id, metadata key or value, nested) fails at decode, not later
    in the output encoding or the Redis key, where it took the whole batch down."""
    poison = [
        b'{"text": "hello there", "id": "\\ud800"}',
        b'{"text": "hello there", "metadata": {"k": "\\udfff"}}',
        b'{"text": "hello there", "metadata": {"\\ud83d": 1}}',
        b'{"text": "hello there", "metadata": {"a": [1, {"b": "x\\ud800y"}]}}',
    ]
    for bad in poison:
        model = FakeModel()
        values = [event(f"good {i}") for i in range(5)]
        values.insert(2, bad)
        out = process(values, model, ModelPool(1))
        docs = [json.loads(o.value) for o in out]
        assert [o.dead_letter for o in out] == [False, False, True, False, False, False], bad
        assert docs[2]["error"] == "invalid_unicode" and docs[2]["raw"].encode() == bad
        assert [d["id"] for i, d in enumerate(docs) if i != 2] == [f"in:0:{i}" for i in (0, 1, 3, 4, 5)]


class MalformedModel(FakeModel):
    """Answers "x" instead of a result for texts that contain "odd"."""

    def run(self, prepared: list[str], tasks: list[str] | None = None) -> list[Prediction]:
        out = super().run(prepared, tasks)
        return [Prediction({"spam": "x"}, False) if "odd" in t else p for t, p in zip(prepared, out)]


def test_a_failure_while_building_one_output_spares_the_others() -> None:
    out = process([event("one"), event("odd one"), event("three")], MalformedModel(), ModelPool(1))
    assert [o.dead_letter for o in out] == [False, True, False]
    assert json.loads(out[1].value)["error"] == "internal_error"


class BrokenModel(FakeModel):
    """Fails every batch while `broken` (a lost CUDA context, out of memory)."""

    broken = True

    def run(self, prepared: list[str], tasks: list[str] | None = None) -> list[Prediction]:
        if self.broken:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return super().run(prepared, tasks)


def test_a_lasting_model_failure_is_not_dead_lettered() -> None:
    """Every event became model_error and was acked: a broken model emptied the topic into the
    dead-letter topic. Now the batch is held (not acked) and the worker turns not ready."""
    from worker.model_pool import ModelUnavailable

    model, pool = BrokenModel(), ModelPool(1, [PIPELINE.name])

    async def scenario() -> list[Outgoing | None]:
        processor = BatchProcessor(PIPELINE, model, ResultCache(None, 0), pool)
        batch = [Record(raw=event(f"text {i}"), key=None, source=Source("in", 0, i)) for i in range(3)]
        for attempt in range(pool.failure_limit):
            assert pool.healthy, attempt
            try:
                await processor.process(batch)
            except ModelUnavailable:
                continue
            raise AssertionError("a broken model must not give outputs or dead letters")
        assert not pool.healthy  # /readyz says not ready
        model.broken = False  # it recovered
        out = await processor.process(batch)
        assert pool.healthy
        return out

    try:
        out = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert [o.dead_letter for o in out if o is not None] == [False, False, False]


class TwoSpamHeads(FakeModel):
    """ "spam" says ham and "spam_email" says spam, whatever the text."""

    @property
    def labels(self) -> dict[str, list[str]]:
        return {"spam": LABELS, "spam_email": LABELS}

    def run(self, prepared: list[str], tasks: list[str] | None = None) -> list[Prediction]:
        with self.lock:
            self.runs.append(list(tasks or []))
        answer = {
            "spam": {"label": "ham", "score": 0.8, "scores": {"ham": 0.8, "spam": 0.2}},
            "spam_email": {"label": "spam", "score": 0.7, "scores": {"ham": 0.3, "spam": 0.7}},
        }
        return [Prediction({t: answer[t] for t in tasks or answer}, False) for _ in prepared]


def test_an_email_takes_the_email_head_and_a_bare_text_the_pipelines() -> None:
    pipeline = PIPELINE.model_copy(update={"email_heads": {"spam": "spam_email"}})
    model = TwoSpamHeads()
    message = "From: a@example.com\r\nSubject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nsee you at noon\r\n"
    pool = ModelPool(1)

    async def scenario() -> list[Outgoing]:
        await pool.acquire(pipeline.name)
        processor = BatchProcessor(pipeline, model, ResultCache(None, 0), pool)
        values = [event("see you at noon"), json.dumps({"email": message}).encode()]
        records = [Record(raw=v, key=None, source=Source("in", 0, i)) for i, v in enumerate(values)]
        return await processor.process(records)

    try:
        bare, mail = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert model.runs == [["spam", "spam_email"]]  # one model call, both heads, every text
    assert json.loads(bare.value)["results"] == {
        "spam": {"label": "ham", "score": 0.8, "scores": {"ham": 0.8, "spam": 0.2}}
    }
    assert (
        json.loads(mail.value)["results"]["spam"]["label"] == "spam"
        and "spam_email" not in json.loads(mail.value)["results"]
    )
    assert (bare.topic, mail.topic) == ("out", "out.spam")  # routes read the chosen answer
