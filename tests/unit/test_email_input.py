"""Raw e-mail in: MIME structure, transfer encodings, charsets, HTML, attachments, hostile input."""

from __future__ import annotations

import base64
import json
from email.message import EmailMessage

import pytest

from worker.codec import DecodeError, Source, decode, encode_output
from worker.email_input import MAX_HTML_CHARS, MAX_PARTS, parse_email

SRC = Source("email.raw", 0, 42)


def message(body: str | None = "Hello team, the slides are attached.", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = headers.get("sender", "Alice <alice@example.com>")
    msg["To"] = "team@example.com"
    msg["Subject"] = headers.get("subject", "Slides for Monday")
    msg["Date"] = "Mon, 30 Nov 2026 09:15:00 +0000"
    msg["Message-ID"] = headers.get("message_id", "<slides-1@example.com>")
    if body is not None:
        msg.set_content(body)
    return msg


def test_plain_message_gives_subject_body_and_headers() -> None:
    parsed = parse_email(message().as_bytes())
    assert parsed.text == "Slides for Monday\n\nHello team, the slides are attached."
    assert parsed.headers == {
        "from": "Alice <alice@example.com>",
        "to": "team@example.com",
        "subject": "Slides for Monday",
        "date": "Mon, 30 Nov 2026 09:15:00 +0000",
        "message_id": "<slides-1@example.com>",
    }


def test_multipart_alternative_prefers_text_plain_and_skips_attachments() -> None:
    msg = message("Plain version of the offer.")
    msg.add_alternative("<html><body><p>HTML version</p></body></html>", subtype="html")
    msg.make_mixed()
    msg.add_attachment(b"%PDF-1.7 secret words in a pdf", maintype="application", subtype="pdf", filename="a.pdf")
    msg.add_attachment("an attached text file", filename="notes.txt")
    parsed = parse_email(msg.as_bytes())
    assert parsed.text == "Slides for Monday\n\nPlain version of the offer."


def test_html_only_message_becomes_visible_text() -> None:
    msg = message(None, subject="Your invoice")
    html = (
        "<html><head><title>t</title><style>p{color:red}</style><script>var x='hidden';</script></head>"
        "<body><p>Invoice <b>#123</b> is due.</p><!-- a comment --><p>Pay&nbsp;today &amp; save.</p></body></html>"
    )
    msg.set_content(html, subtype="html")
    parsed = parse_email(msg.as_bytes())
    assert parsed.text.startswith("Your invoice\n\n")
    body = parsed.text.split("\n\n", 1)[1]
    assert "Invoice #123 is due." in body.replace(" #", " #").replace("  ", " ")
    assert "Pay\xa0today & save." in body
    assert "hidden" not in body and "color" not in body and "comment" not in body


def test_quoted_printable_and_base64_and_a_legacy_charset() -> None:
    qp = (
        b"From: b@example.com\r\nSubject: =?iso-8859-1?q?Caf=E9_menu?=\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Cr=E8me br=FBl=E9e tonight, long line that is soft=\r\n-wrapped here.\r\n"
    )
    parsed = parse_email(qp)
    assert parsed.headers["subject"] == "Café menu"
    assert "Crème brûlée tonight, long line that is soft-wrapped here." in parsed.text
    chinese = "会议改到明天下午三点。".encode("gb2312")
    b64 = (
        b"From: c@example.cn\r\nSubject: =?gb2312?b?" + base64.b64encode("会议通知".encode("gb2312")) + b"?=\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=gb2312\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(chinese)
        + b"\r\n"
    )
    parsed = parse_email(b64)
    assert parsed.text == "会议通知\n\n会议改到明天下午三点。"


def test_unknown_charset_and_garbage_headers_do_not_fail() -> None:
    raw = (
        b"From: \x00\xff broken\r\nSubject: hi there\r\nDate: not a date\r\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nbody words \xe9\r\n"
    )
    parsed = parse_email(raw)
    assert parsed.text.startswith("hi there\n\nbody words")


def test_json_event_with_email_or_email_b64_and_message_id_as_default_id() -> None:
    raw_mail = message().as_bytes()
    for event in ({"email": raw_mail.decode()}, {"email_b64": base64.b64encode(raw_mail).decode()}):
        decoded = decode(json.dumps(event).encode(), SRC)
        assert decoded.id == "<slides-1@example.com>"
        assert decoded.text.startswith("Slides for Monday")
        out = json.loads(
            encode_output(
                decoded,
                {},
                {"name": "m", "version": "v"},
                cached=False,
                truncated=False,
                latency_ms=1,
                language={"code": "en", "confidence": 1.0, "coverage": 1.0},
            )
        )
        assert out["email"]["from"] == "Alice <alice@example.com>" and out["id"] == "<slides-1@example.com>"
    explicit = decode(json.dumps({"id": "mine", "email": raw_mail.decode()}).encode(), SRC)
    assert explicit.id == "mine"
    no_id = message()
    del no_id["Message-ID"]
    assert decode(json.dumps({"email": no_id.as_string()}).encode(), SRC).id == "email.raw:0:42"


def test_rfc822_input_format_reads_the_record_value_as_the_message() -> None:
    event = decode(message().as_bytes(), SRC, input_format="rfc822")
    assert event.id == "<slides-1@example.com>" and event.email["to"] == "team@example.com"
    assert event.metadata == {}
    with pytest.raises(DecodeError) as info:
        decode(b"no headers at all", SRC, input_format="rfc822")
    assert info.value.code == "email_malformed"


def test_hostile_messages_are_bounded() -> None:
    """Deep nesting and thousands of parts are refused; huge HTML is cut before parsing."""
    deep = "".join(f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n" for i in range(500)) + "x"
    with pytest.raises(DecodeError) as info:
        decode(json.dumps({"email": deep}).encode(), SRC)
    assert info.value.code == "email_too_many_parts"
    many = "Content-Type: multipart/mixed; boundary=b\n\n" + "--b\nContent-Type: text/plain\n\nx\n" * (MAX_PARTS * 100)
    with pytest.raises(DecodeError):
        decode(json.dumps({"email": many}).encode(), SRC)
    html = message(None)
    html.set_content("<p>" + "<b>tag</b> " * 200_000 + "</p>", subtype="html")
    parsed = parse_email(html.as_bytes())
    assert parsed.text.startswith("Slides for Monday")
    assert len(parsed.text) < MAX_HTML_CHARS  # only the first MAX_HTML_CHARS of HTML were parsed


def test_email_events_match_the_published_schemas() -> None:
    from pathlib import Path

    import jsonschema

    schemas = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    input_schema = json.loads((schemas / "input.schema.json").read_text())
    output_schema = json.loads((schemas / "output.schema.json").read_text())
    raw = message().as_bytes()
    for event in ({"email": raw.decode()}, {"email_b64": base64.b64encode(raw).decode(), "metadata": {"k": 1}}):
        jsonschema.validate(event, input_schema)
        decoded = decode(json.dumps(event).encode(), SRC)
        result = {"spam": {"label": "ham", "score": 0.9, "scores": {"ham": 0.9, "spam": 0.1}}}
        out = encode_output(
            decoded,
            result,
            {"name": "m", "version": "v"},
            cached=False,
            truncated=False,
            latency_ms=1,
            language={"code": "en", "confidence": 1.0, "coverage": 1.0},
        )
        jsonschema.validate(json.loads(out), output_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"text": "hi", "email": raw.decode()}, input_schema)
