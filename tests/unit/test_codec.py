"""The event contracts: every DecodeError code from a concrete bad input, round trips, and a fuzz test."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import codec
from worker.codec import (
    MAX_DEPTH,
    MAX_ID_CHARS,
    DecodeError,
    InputEvent,
    Source,
    decode,
    encode_dead_letter,
    encode_output,
    raw_bytes,
)

SRC = Source("news.raw", 3, 1234)


def _code(raw: bytes | None, max_bytes: int = 1_000_000) -> str:
    with pytest.raises(DecodeError) as info:
        decode(raw, SRC, max_bytes)
    assert info.value.detail  # every code comes with a human-readable detail
    assert str(info.value).startswith(info.value.code + ": ")
    return info.value.code


def _event(**fields: object) -> bytes:
    return json.dumps(fields).encode("utf-8")


BAD_INPUTS: list[tuple[str, bytes | None, str]] = [
    ("none", None, "empty_message"),
    ("empty bytes", b"", "empty_message"),
    ("invalid json", b'{"text": "hello"', "invalid_json"),
    ("trailing garbage", b'{"text": "hello"} x', "invalid_json"),
    ("single quotes", b"{'text': 'hello'}", "invalid_json"),
    ("raw control char in string", b'{"text": "a\x01b"}', "invalid_json"),
    ("NaN", b'{"text": "hello", "score": NaN}', "invalid_json"),
    ("Infinity", b'{"text": "hello", "score": -Infinity}', "invalid_json"),
    ("float overflow", b'{"text": "hello", "score": 1e999}', "invalid_json"),
    ("huge integer", b'{"text": "hello", "n": ' + b"7" * 5000 + b"}", "invalid_json"),
    ("non-utf8", b'{"text": "caf\xe9"}', "not_utf8"),
    ("utf-16 encoded", '{"text": "hi"}'.encode("utf-16-le"), "nul_byte"),
    ("NUL byte", b'{"text": "hello\x00"}', "nul_byte"),
    ("array", b'["text", "hello"]', "not_object"),
    ("string", b'"hello"', "not_object"),
    ("number", b"42", "not_object"),
    ("null", b"null", "not_object"),
    ("missing text", _event(id="a", body="hello"), "missing_text"),
    ("text null", _event(text=None), "text_not_string"),
    ("text number", _event(text=12), "text_not_string"),
    ("text list", _event(text=["hello"]), "text_not_string"),
    ("text object", _event(text={"t": "hello"}), "text_not_string"),
    ("text bool", _event(text=True), "text_not_string"),
    ("empty text", _event(text=""), "empty_text"),
    ("blank text", _event(text=" \t\n\r "), "blank_text"),
    ("unicode blank text", _event(text="\u00a0\u2003\u3000"), "blank_text"),
    ("duplicate key", b'{"text": "a", "text": "b"}', "duplicate_key"),
    ("duplicate id", b'{"id": "1", "id": "2", "text": "hello"}', "duplicate_key"),
    ("nested duplicate key", b'{"text": "a", "metadata": {"k": 1, "k": 2}}', "duplicate_key"),
    ("recursion-deep array", b"[" * 100_000 + b"]" * 100_000, "nesting_too_deep"),
    ("recursion-deep object", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nesting_too_deep"),
    (
        "33 levels in metadata",
        b'{"text": "hello", "metadata": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}",
        "nesting_too_deep",
    ),
    ("lone surrogate", b'{"text": "hello \\ud800 world"}', "invalid_unicode"),
    ("bell", _event(text="hello\u0007"), "control_characters"),
    ("escape", _event(text="\u001b[31mred"), "control_characters"),
    ("C1 control", _event(text="hello\u0085world"), "control_characters"),
    ("emoji only", _event(text="😀🔥👍"), "no_words"),
    ("punctuation only", _event(text="?!... --- ***"), "no_words"),
    ("id number", _event(id=7, text="hello"), "id_not_string"),
    ("id list", _event(id=["a"], text="hello"), "id_not_string"),
    ("id object", _event(id={"a": 1}, text="hello"), "id_not_string"),
    ("id bool", _event(id=False, text="hello"), "id_not_string"),
    ("id empty", _event(id="", text="hello"), "empty_id"),
    ("id blank", _event(id="   ", text="hello"), "empty_id"),
    ("id too long", _event(id="x" * (MAX_ID_CHARS + 1), text="hello"), "id_too_long"),
    ("metadata list", _event(text="hello", metadata=[1, 2]), "metadata_not_object"),
    ("metadata string", _event(text="hello", metadata="m"), "metadata_not_object"),
    ("text and email", _event(text="hello", email="Subject: hi\n\nbody"), "conflicting_fields"),
    ("email and email_b64", _event(email="Subject: hi\n\nbody", email_b64="U3ViamVjdA=="), "conflicting_fields"),
    ("email number", _event(email=5), "email_not_string"),
    ("email_b64 list", _event(email_b64=["eA=="]), "email_not_string"),
    ("email_b64 not base64", _event(email_b64="not base64!"), "email_b64_invalid"),
    ("email blank", _event(email="   \r\n"), "email_empty"),
    ("email without headers", _event(email="just some words, no header lines"), "email_malformed"),
    ("email with nothing to read", _event(email="From: a@example.com\n\n"), "email_no_text"),
    ("email surrogate", b'{"email": "Subject: \\ud800\\n\\nhi"}', "invalid_unicode"),
    ("email of symbols only", _event(email="Subject: !!!\n\n???"), "no_words"),
    (
        "email with too many parts",
        _event(
            email="Content-Type: multipart/mixed; boundary=b\n\n"
            + "".join("--b\nContent-Type: text/plain\n\npart\n" for _ in range(100))
            + "--b--\n"
        ),
        "email_too_many_parts",
    ),
]


@pytest.mark.parametrize("raw,code", [(r, c) for _, r, c in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS])
def test_bad_input_gives_precise_code(raw: bytes | None, code: str) -> None:
    assert _code(raw) == code


def test_too_large() -> None:
    raw = _event(text="word " * 300)
    assert _code(raw, max_bytes=len(raw) - 1) == "too_large"
    assert decode(raw, SRC, max_bytes=len(raw)).text.startswith("word")
    assert _code(b"x" * 10_000_001) == "too_large"  # a 10 MB message, default limit


def test_depth_limit_is_exact() -> None:
    # The event object is level 1: MAX_DEPTH - 1 nested lists inside it is exactly at the limit.
    inner = MAX_DEPTH - 1
    ok = b'{"text": "hello", "m": ' + b"[" * inner + b"]" * inner + b"}"
    assert decode(ok, SRC).metadata == {}
    over = b'{"text": "hello", "m": ' + b"[" * (inner + 1) + b"]" * (inner + 1) + b"}"
    assert _code(over) == "nesting_too_deep"


def test_every_code_in_codec_is_covered() -> None:
    source = Path(codec.__file__).read_text()
    codes = set(re.findall(r'DecodeError\(\s*"([a-z_0-9]+)"', source))
    covered = {c for _, _, c in BAD_INPUTS} | {"too_large"}
    assert codes, "no DecodeError codes found in codec.py"
    assert codes <= covered, f"codes without a test: {sorted(codes - covered)}"


def test_valid_event_round_trip() -> None:
    raw = _event(id="evt-1", text="  Stocks rose 3% — « café » ✓\ttoday\n", metadata={"lang": "en", "n": [1, 2.5]})
    event = decode(raw, SRC)
    assert event == InputEvent(
        id="evt-1",
        text="  Stocks rose 3% — « café » ✓\ttoday\n",
        source=SRC,
        metadata={"lang": "en", "n": [1, 2.5]},
    )


def test_tabs_newlines_and_emoji_with_words_are_fine() -> None:
    assert decode(_event(text="great 👍\r\n\tthanks"), SRC).text == "great 👍\r\n\tthanks"
    assert decode(_event(text="42"), SRC).text == "42"  # digits are words
    assert decode(_event(text="日本語"), SRC).text == "日本語"


def test_null_metadata_and_id_at_limit() -> None:
    event = decode(_event(id="x" * MAX_ID_CHARS, text="hello", metadata=None), SRC)
    assert event.metadata == {}
    assert len(event.id) == MAX_ID_CHARS


@pytest.mark.parametrize("doc", [{"text": "hello"}, {"id": None, "text": "hello"}])
def test_missing_id_is_derived_and_stable(doc: dict) -> None:
    raw = json.dumps(doc).encode()
    first = decode(raw, Source("email.raw", 2, 99))
    again = decode(raw, Source("email.raw", 2, 99))  # a redelivery of the same record
    assert first.id == again.id == "email.raw:2:99"
    assert decode(raw, Source("email.raw", 2, 100)).id != first.id
    assert decode(raw, Source("email.raw", 1, 99)).id != first.id
    assert decode(raw, Source("news.raw", 2, 99)).id != first.id


@pytest.mark.parametrize(
    "raw,encoding",
    [
        (b'{"text": "caf\xc3\xa9 \xf0\x9f\x98\x80", "id": 1}', "utf-8"),
        (b"not json at all \n\t \\ \" '", "utf-8"),
        (b'{"text": "caf\xe9"}', "base64"),
        (b"\xff\xfe\x00\x01\x80", "base64"),
        (bytes(range(256)), "base64"),
        (b'{"text": "a\x00"}', "utf-8"),  # NUL is valid UTF-8: it must survive as text
    ],
)
def test_dead_letter_raw_is_lossless(raw: bytes, encoding: str) -> None:
    letter_bytes = encode_dead_letter("invalid_json", "detail text", SRC, raw)
    letter = json.loads(letter_bytes.decode("utf-8"))
    assert letter["error"] == "invalid_json"
    assert letter["detail"] == "detail text"
    assert letter["source"] == {"topic": "news.raw", "partition": 3, "offset": 1234}
    assert letter["raw_encoding"] == encoding
    assert raw_bytes(letter) == raw


def test_dead_letter_for_empty_message() -> None:
    letter = json.loads(encode_dead_letter("empty_message", "the record has no value", SRC, None))
    assert raw_bytes(letter) == b""
    assert letter["raw_encoding"] == "utf-8"


def test_output_matches_contract() -> None:
    event = decode(_event(id="e1", text="hello", metadata={"k": "v"}), SRC)
    results = {
        "sentiment": {"label": "positive", "score": 0.9, "scores": {"negative": 0.05, "neutral": 0.05, "positive": 0.9}}
    }
    out = json.loads(
        encode_output(
            event,
            results,
            {"name": "m", "version": "abc"},
            cached=True,
            truncated=False,
            latency_ms=12.3456,
            language={"code": "en", "confidence": 1.0, "coverage": 1.0},
        )
    )
    assert set(out) == {"id", "results", "language", "model", "cached", "truncated", "source", "metadata", "latency_ms"}
    assert out["language"] == {"code": "en", "confidence": 1.0, "coverage": 1.0}
    assert out["id"] == "e1"
    assert out["results"] == results
    assert out["model"] == {"name": "m", "version": "abc"}
    assert out["cached"] is True and out["truncated"] is False
    assert out["source"] == {"topic": "news.raw", "partition": 3, "offset": 1234}
    assert out["metadata"] == {"k": "v"}
    assert out["latency_ms"] == 12.35


def test_output_is_strict_json_and_utf8() -> None:
    event = decode(_event(text="hello", metadata={"x": 1.5, "who": "café ✓"}), SRC)
    raw = encode_output(
        event,
        {},
        {"name": "m", "version": "v"},
        cached=False,
        truncated=True,
        latency_ms=0.0,
        language={"code": "en", "confidence": 1.0, "coverage": 1.0},
    )
    assert "café ✓".encode() in raw  # not \u-escaped
    # No NaN / Infinity can get into an output: parse it strictly.
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


# -- property-based fuzzing -------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(raw: bytes) -> None:
    try:
        event = decode(raw, SRC)
    except DecodeError as err:
        assert err.code and isinstance(err.code, str)
        return
    assert isinstance(event, InputEvent)
    assert isinstance(event.text, str) and event.text.strip()
    assert isinstance(event.id, str) and event.id.strip()
    assert isinstance(event.metadata, dict)
    event.text.encode("utf-8")  # no lone surrogates got through
    # Whatever decoded must encode back to strict JSON.
    json.loads(
        encode_output(
            event,
            {},
            {"name": "m", "version": "v"},
            cached=False,
            truncated=False,
            latency_ms=0,
            language={"code": "en", "confidence": 1.0, "coverage": 1.0},
        )
    )


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    _check(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
json_events = st.fixed_dictionaries(
    {},
    optional={"id": json_values, "text": st.one_of(st.text(max_size=60), json_values), "metadata": json_values},
).flatmap(
    lambda base: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(lambda extra: {**extra, **base})
)


@FUZZ
@given(json_events, st.booleans())
def test_fuzz_json_dicts(doc: dict, ascii_only: bool) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")  # lone surrogates as (invalid) raw bytes
    _check(raw)


@FUZZ
@given(st.text(max_size=80))
def test_fuzz_text_field(text: str) -> None:
    """Any text value: accepted with the same text, or rejected with a code."""
    raw = json.dumps({"text": text}).encode()
    try:
        event = decode(raw, SRC)
    except DecodeError:
        return
    assert event.text == text


def test_metadata_numbers_pass_through_exactly() -> None:
    """Floats were re-serialized through binary floating point: 12345678901234567.89 came out
    as 1.2345678901234568e16. The output now says what the input said."""
    raw = (
        b'{"text": "hello", "metadata": {"amount": 12345678901234567.89, "rate": 0.1, "tiny": 2.5e-300,'
        b' "list": [1.10, -0.0, 3], "big": 123456789012345678901234567890}}'
    )
    event = decode(raw, SRC)
    out = encode_output(
        event,
        {},
        {"name": "m", "version": "v"},
        cached=False,
        truncated=False,
        latency_ms=0,
        language={"code": "en", "confidence": 1.0, "coverage": 1.0},
    )
    text = out.decode()
    for literal in ("12345678901234567.89", "0.1", "1.10", "-0.0", "123456789012345678901234567890"):
        assert literal in text, literal
    assert "2.5E-300" in text or "2.5e-300" in text
    doc = json.loads(out, parse_float=Decimal)
    assert doc["metadata"]["amount"] == Decimal("12345678901234567.89")
    assert doc["metadata"]["list"][0] == Decimal("1.10")
