"""The event contracts: decode and validate input events, encode outputs and dead letters.

Input:       {"id": str?, "text": str, "metadata": object?}, or "email" (a raw RFC 5322 message as a
             string) or "email_b64" (its bytes in base64) instead of "text"; with a pipeline's
             input_format = "rfc822" the record value is the raw message itself
Output:      {"id", "results", "model", "cached", "truncated", "source", "metadata", "latency_ms"},
             and "email": {"from", "to", "subject", "date", "message_id"} for an e-mail input
Dead letter: {"error", "detail", "source", "raw", "raw_encoding", "raw_size", "raw_sha256", "raw_truncated"}

A dead letter carries the original bytes losslessly while it fits in DEAD_LETTER_MAX_BYTES (under
the producer's and Kafka's default ~1 MB message limit). A bigger one (a 10 MB event, or a 1 MB
event that JSON escaping blows up) carries the first RAW_PREFIX_BYTES bytes, the original size and
its SHA-256, with raw_truncated=true; its source (topic, partition, offset) re-reads the original.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import unicodedata
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from worker.email_input import EmailError, parse_email
from worker.limits import DEAD_LETTER_MAX_BYTES, DEFAULT_MAX_EVENT_BYTES, MAX_DEPTH, MAX_ID_CHARS, RAW_PREFIX_BYTES


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int

    def derived_id(self) -> str:
        """Stable across redeliveries of the same record."""
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass
class InputEvent:
    id: str
    text: str
    source: Source
    metadata: dict[str, Any] = field(default_factory=dict)
    email: dict[str, str | None] | None = None  # from, to, subject, date, message_id of an e-mail input


TEXT_FIELDS = ("text", "email", "email_b64")  # exactly one of them: the text, or a raw RFC 5322 message


class DecodeError(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DecodeError("duplicate_key", f"key {key!r} appears more than once in one object")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> None:
    raise DecodeError("invalid_json", f"{name} is not valid JSON")


def _parse_float(literal: str) -> Decimal:
    """Numbers with a fraction or exponent stay decimal, so that metadata passes through exactly."""
    if math.isinf(float(literal)):  # 1e999: out of any consumer's float range
        raise DecodeError("invalid_json", f"number {literal[:40]} is out of range")
    return Decimal(literal)


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _encodable(value: Any) -> bool:
    """Every string in it (object keys included) encodes to UTF-8: no lone surrogate escapes."""
    try:
        _json_text(value).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_text(value: Any) -> str:
    """Compact JSON like json.dumps, but a decimal is written as it was read (json.dumps would
    go through a binary float: 12345678901234567.89 became 1.2345678901234568e16)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json_text(str(k))}:{_json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _has_words(text: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def decode(
    raw: bytes | None, source: Source, max_bytes: int = DEFAULT_MAX_EVENT_BYTES, input_format: str = "json"
) -> InputEvent:
    """One validated input event, or a DecodeError with a precise code. `input_format` "rfc822":
    the record value is a raw e-mail message, not a JSON event."""
    if raw is None or len(raw) == 0:
        raise DecodeError("empty_message", "the record has no value")
    if len(raw) > max_bytes:
        raise DecodeError("too_large", f"{len(raw)} bytes is over the {max_bytes}-byte limit")
    if b"\x00" in raw:
        raise DecodeError("nul_byte", "the record contains a NUL byte")
    if input_format == "rfc822":
        text, headers = _from_email(raw)
        return InputEvent(id=_email_id(headers) or source.derived_id(), text=text, source=source, email=headers)
    doc = _json_object(raw)
    text, headers = _event_text(doc)
    event_id = doc.get("id")
    if event_id is None:
        event_id = _email_id(headers) or source.derived_id()
    elif not isinstance(event_id, str):
        raise DecodeError("id_not_string", f'"id" is a JSON {type(event_id).__name__}, not a string')
    elif not event_id.strip():
        raise DecodeError("empty_id", '"id" is empty')
    elif len(event_id) > MAX_ID_CHARS:
        raise DecodeError("id_too_long", f'"id" is over {MAX_ID_CHARS} characters')
    metadata = doc.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise DecodeError("metadata_not_object", f'"metadata" is a JSON {type(metadata).__name__}, not an object')
    for name, value in (("id", event_id), ("metadata", metadata)):
        if not _encodable(value):
            raise DecodeError("invalid_unicode", f'"{name}" contains a lone surrogate escape')
    return InputEvent(id=event_id, text=text, source=source, metadata=metadata, email=headers)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        doc = json.loads(
            body, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant, parse_float=_parse_float
        )
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("nesting_too_deep", f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise DecodeError("invalid_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer over Python's 4300-digit conversion limit
        raise DecodeError("invalid_json", str(exc).split(":")[0]) from None
    if not isinstance(doc, dict):
        raise DecodeError("not_object", f"the event is a JSON {type(doc).__name__}, not an object")
    if _depth(doc, MAX_DEPTH) > MAX_DEPTH:
        raise DecodeError("nesting_too_deep", f"JSON nested deeper than {MAX_DEPTH} levels")
    return doc


def _event_text(doc: dict[str, Any]) -> tuple[str, dict[str, str | None] | None]:
    """The text to classify: "text", or the message in "email" / "email_b64" (and its headers)."""
    given = [name for name in TEXT_FIELDS if name in doc]
    if len(given) > 1:
        raise DecodeError("conflicting_fields", f"the event has both {given[0]!r} and {given[1]!r}: give one")
    if not given:
        raise DecodeError("missing_text", 'the event has no "text" field (nor "email" or "email_b64")')
    name = given[0]
    value = doc[name]
    kind = type(value).__name__
    if name == "text":
        if not isinstance(value, str):
            raise DecodeError("text_not_string", f'"text" is a JSON {kind}, not a string')
        return _checked_text(value), None
    if not isinstance(value, str):
        raise DecodeError("email_not_string", f'"{name}" is a JSON {kind}, not a string (the message, or its base64)')
    if name == "email":
        if not _encodable(value):
            raise DecodeError("invalid_unicode", '"email" contains a lone surrogate escape')
        return _from_email(value.encode("utf-8"))
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("email_b64_invalid", '"email_b64" is not valid base64') from None
    return _from_email(raw)


def _from_email(raw: bytes) -> tuple[str, dict[str, str | None]]:
    try:
        parsed = parse_email(raw)
    except EmailError as err:
        raise DecodeError(err.code, err.detail) from None
    # Mail bodies carry form feeds and other control characters: spaces here, not a dead letter.
    text = "".join(" " if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" else ch for ch in parsed.text)
    if not _encodable(text) or not _encodable(parsed.headers):
        raise DecodeError("invalid_unicode", "the e-mail decodes to a lone surrogate")
    if not _has_words(text):
        raise DecodeError("no_words", "the e-mail's subject and body have no letters or digits")
    return text, parsed.headers


def _email_id(headers: dict[str, str | None] | None) -> str | None:
    """The Message-ID as the default id, when it fits the id limits."""
    message_id = (headers or {}).get("message_id")
    return message_id if message_id and len(message_id) <= MAX_ID_CHARS else None


def _checked_text(text: str) -> str:
    if text == "":
        raise DecodeError("empty_text", '"text" is empty')
    if not text.strip():
        raise DecodeError("blank_text", '"text" holds only whitespace')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError("invalid_unicode", '"text" contains a lone surrogate escape') from None
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" for ch in text):
        raise DecodeError("control_characters", '"text" contains control characters other than tab and newline')
    if not _has_words(text):
        raise DecodeError("no_words", '"text" has no letters or digits (only symbols, emoji or punctuation)')
    return text


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_output(
    event: InputEvent,
    results: dict[str, Any],
    model: dict[str, str],
    *,
    cached: bool,
    truncated: bool,
    latency_ms: float,
    language: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> bytes:
    """`language`: {"code", "confidence", "coverage"}; `extra`: the model's top-level fields
    (answer, candidates, embedding), the embedding written last as it is the largest."""
    extra = dict(extra or {})
    embedding = extra.pop("embedding", None)
    doc: dict[str, Any] = {"id": event.id, "results": results, **extra, "language": language}
    doc |= {
        "model": model,
        "cached": cached,
        "truncated": truncated,
        "source": asdict(event.source),
        "latency_ms": round(latency_ms, 2),
    }
    if event.email is not None:
        doc["email"] = event.email
    if embedding is not None:
        doc["embedding"] = embedding
    # The metadata is written by _json_text: its numbers pass through exactly as they came in.
    return _dumps(doc)[:-1] + b',"metadata":' + _json_text(event.metadata).encode("utf-8") + b"}"


def _raw_field(raw: bytes) -> tuple[str, str]:
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def _prefix(raw: bytes, limit: int) -> bytes:
    """The first `limit` bytes, cut back to a UTF-8 character boundary when the bytes are UTF-8."""
    cut = raw[:limit]
    for back in range(4):
        try:
            (cut[: len(cut) - back] if back else cut).decode("utf-8")
            return cut[: len(cut) - back] if back else cut
        except UnicodeDecodeError:
            continue
    return cut


def encode_dead_letter(
    code: str, detail: str, source: Source, raw: bytes | None, max_bytes: int = DEAD_LETTER_MAX_BYTES
) -> bytes:
    """The original bytes travel losslessly (as text when UTF-8, else base64) while the dead letter
    fits in `max_bytes`; past that, the first RAW_PREFIX_BYTES bytes with raw_truncated=true."""
    raw = raw or b""
    doc: dict[str, Any] = {"error": code, "detail": detail, "source": asdict(source)}
    meta = {"raw_size": len(raw), "raw_sha256": hashlib.sha256(raw).hexdigest()}
    text, encoding = _raw_field(raw)
    value = _dumps({**doc, "raw": text, "raw_encoding": encoding, **meta, "raw_truncated": False})
    if len(value) <= max_bytes:
        return value
    limit = min(RAW_PREFIX_BYTES, max(0, max_bytes // 8))  # worst JSON escaping is 6 bytes per byte
    text, encoding = _raw_field(_prefix(raw, limit))
    return _dumps({**doc, "raw": text, "raw_encoding": encoding, **meta, "raw_truncated": True})


def raw_bytes(dead_letter: dict[str, Any]) -> bytes:
    """The original bytes back from a decoded dead letter (only their first part when raw_truncated)."""
    if dead_letter["raw_encoding"] == "base64":
        return base64.b64decode(dead_letter["raw"])
    return dead_letter["raw"].encode("utf-8")
