"""docs/: the reference is generated from the source and up to date; the event JSON Schemas agree with
what worker/codec.py really encodes and decodes; the architecture diagram is drawn from source."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest

from worker import codec
from worker.codec import DecodeError, Source, decode, encode_dead_letter, encode_output
from worker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"
SOURCE = Source("news.raw", 3, 17)


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# --- reference.md ---------------------------------------------------------------------------------


def test_reference_is_up_to_date() -> None:
    gen = _load(ROOT / "docs" / "gen_reference.py")
    assert (ROOT / "docs" / "reference.md").read_text() == gen.render(), (
        "docs/reference.md is out of date: run .venv/bin/python docs/gen_reference.py"
    )


def test_reference_lists_every_setting_and_metric() -> None:
    text = (ROOT / "docs" / "reference.md").read_text()
    for name in Settings.model_fields:
        assert f"`BERTSTREAM_{name.upper()}`" in text
    from worker import metrics

    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if name and name.startswith("bertstream_"):
            assert f"`{name}" in text


def test_generator_descriptions_are_not_stale() -> None:
    gen = _load(ROOT / "docs" / "gen_reference.py")
    assert set(gen.DESCRIPTIONS) <= set(Settings.model_fields), set(gen.DESCRIPTIONS) - set(Settings.model_fields)


# --- event schemas --------------------------------------------------------------------------------


def _results(rng: random.Random) -> dict:
    """Shaped like pipelines.classifier.Classifier.predict: the committed heads' real labels, softmax scores."""
    out = {}
    for head_dir in sorted(p.parent for p in (ROOT / "pipelines" / "default_heads").glob("*/head.json")):
        labels = json.loads((head_dir / "head.json").read_text())["labels"]
        logits = [rng.uniform(-4, 4) for _ in labels]
        total = sum(math.exp(v) for v in logits)
        probs = [math.exp(v) / total for v in logits]
        top = max(range(len(labels)), key=probs.__getitem__)
        out[head_dir.name] = {
            "label": labels[top],
            "score": round(probs[top], 6),
            "scores": {label: round(p, 6) for label, p in zip(labels, probs)},
        }
    return out


VALID_INPUTS = [
    b'{"text": "Shares rose 3% after the results."}',
    b'{"id": "n-1", "text": "Rates held", "metadata": {"source": "demo", "tags": ["a", 1]}}',
    b'{"id": null, "text": "caf\\u00e9 ouvert", "metadata": null}',
    '{"text": "Multi-line\\n\\ttext with ünïcödé 😀", "extra": 1}'.encode(),
]


@pytest.mark.parametrize("raw", VALID_INPUTS)
def test_valid_inputs_match_the_input_schema_and_encode_valid_outputs(raw: bytes) -> None:
    _validator("input").validate(json.loads(raw))
    event = decode(raw, SOURCE)
    for cached, truncated, latency in ((False, False, 42.129), (True, True, 0.0)):
        value = encode_output(
            event,
            _results(random.Random(len(raw))),
            {"name": "sentence-transformers/all-MiniLM-L6-v2", "version": "53aa51172d14"},
            cached=cached,
            truncated=truncated,
            latency_ms=latency,
            language={"code": "en", "confidence": 0.99, "coverage": 1.0},
        )
        _validator("output").validate(json.loads(value))
    answering = encode_output(
        event,
        {},
        {"name": "multilingual-e5-small", "version": "0123456789ab"},
        cached=False,
        truncated=False,
        latency_ms=1.0,
        language={"code": "zh", "confidence": 0.9, "coverage": 0.97},
        extra={
            "answer": {
                "id": "returns",
                "text": "30 days.",
                "score": 0.91,
                "question": "退货期限是多久？",
                "fields": {},
            },
            "candidates": [{"id": "returns", "score": 0.91}, {"id": "refunds", "score": 0.7}],
            "embedding": [0.6, 0.8],
        },
    )
    _validator("output").validate(json.loads(answering))


def test_the_demo_feed_matches_the_input_schema() -> None:
    validator = _validator("input")
    for name in (
        "news.jsonl",
        "email.jsonl",
        "email_mime.jsonl",
        "news_zh.jsonl",
        "email_zh.jsonl",
        "support_questions.jsonl",
    ):
        for line in (ROOT / "bertstream" / "demo" / "data" / name).read_text().splitlines():
            if line.strip():
                validator.validate(json.loads(line))


@pytest.mark.parametrize(
    "doc, code",
    [
        ({"id": "x"}, "missing_text"),
        ({"text": 3}, "text_not_string"),
        ({"text": ""}, "empty_text"),
        ({"text": "   "}, "blank_text"),
        ({"text": "ok", "id": 7}, "id_not_string"),
        ({"text": "ok", "id": ""}, "empty_id"),
        ({"text": "ok", "id": "x" * 257}, "id_too_long"),
        ({"text": "ok", "metadata": [1]}, "metadata_not_object"),
        (["not", "an", "object"], "not_object"),
    ],
)
def test_the_input_schema_rejects_what_the_codec_rejects(doc: object, code: str) -> None:
    raw = json.dumps(doc).encode()
    with pytest.raises(DecodeError) as caught:
        decode(raw, SOURCE)
    assert caught.value.code == code
    assert list(_validator("input").iter_errors(doc)), f"the input schema accepts {doc!r}, the codec says {code}"


BAD_INPUTS = [
    b"",
    b"\x00",
    b"\xff\xfe not utf-8",
    b'{"text": "unterminated',
    b'{"text": "a", "text": "b"}',
    b"[1, 2]",
    b'{"id": "x1"}',
    b'{"text": 5}',
    b'{"text": ""}',
    b'{"text": " \\t "}',
    b'{"text": "\\ud800"}',
    b'{"text": "a\\u0007b"}',
    b'{"text": "!!! ???"}',
    b'{"text": "ok", "id": 1}',
    b'{"text": "ok", "id": " "}',
    b'{"text": "ok", "metadata": "x"}',
    b"[" * 40 + b"]" * 40,
    b'{"text": "1e999", "n": 1e999}',
]


@pytest.mark.parametrize("raw", BAD_INPUTS)
def test_real_dead_letters_match_the_dead_letter_schema(raw: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(raw, SOURCE, max_bytes=1_000_000)
    value = json.loads(encode_dead_letter(caught.value.code, caught.value.detail, SOURCE, raw))
    _validator("dead_letter").validate(value)
    assert codec.raw_bytes(value) == raw


def test_large_and_binary_dead_letters_match_the_schema() -> None:
    validator = _validator("dead_letter")
    huge = b'{"text": "' + b"\xe2\x82\xac" * 400_000 + b'"}'
    with pytest.raises(DecodeError) as caught:
        decode(huge, SOURCE, max_bytes=1_000_000)
    doc = json.loads(encode_dead_letter(caught.value.code, caught.value.detail, SOURCE, huge))
    validator.validate(doc)
    assert caught.value.code == "too_large"
    binary = bytes(range(256)) * 3
    doc = json.loads(encode_dead_letter("not_utf8", "binary", SOURCE, binary))
    validator.validate(doc)
    assert doc["raw_encoding"] == "base64"
    doc = json.loads(encode_dead_letter("model_error", "the model failed", SOURCE, b'{"text": "x"}'))
    validator.validate(doc)


def test_every_dead_letter_code_in_the_code_is_in_the_schema() -> None:
    enum = set(json.loads((SCHEMAS / "dead_letter.schema.json").read_text())["properties"]["error"]["enum"])
    raised = set()
    for path in (ROOT / "worker").glob("*.py"):
        raised |= set(re.findall(r'(?:DecodeError|encode_dead_letter)\(\s*"([a-z0-9_]+)"', path.read_text()))
    assert raised, "found no dead-letter codes in worker/"
    assert raised <= enum, f"codes missing from docs/schemas/dead_letter.schema.json: {sorted(raised - enum)}"


def test_the_dead_letter_schema_rejects_an_unknown_code() -> None:
    doc = json.loads(encode_dead_letter("invalid_json", "x", SOURCE, b"{"))
    doc["error"] = "made_up"
    assert list(_validator("dead_letter").iter_errors(doc))


# --- architecture diagram -------------------------------------------------------------------------


def test_architecture_diagram_is_drawn_from_the_pipelines(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    gen = _load(ROOT / "docs" / "gen_architecture.py")
    pipelines = tmp_path / "pipelines.toml"
    pipelines.write_text('[pipelines.solo]\ninput = "in"\noutput = "out"\ndead_letter = "dlq"\nheads = ["sentiment"]\n')
    out = gen.draw(pipelines, tmp_path / "arch.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ROOT / "docs" / "architecture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
