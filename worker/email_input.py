"""Raw RFC 5322 e-mail in: the text the model reads, the routing headers, and clear refusals.

The text is `pipelines.mailtext`'s, the same the heads were trained on: the subject, a blank line,
the first text/plain part, else the first text/html part as visible text; charsets and transfer
encodings decoded, attachments skipped. Here the worker adds what a stream needs: a code for each
kind of bad message, and a bound on the work one can cause (the message is at most the event size
limit, a message with more than MAX_PARTS MIME parts is refused, and at most MAX_HTML_CHARS of HTML
is parsed).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.mailtext import MAX_HTML_CHARS, MAX_PARTS, body_text, header, parse

__all__ = ["MAX_HTML_CHARS", "MAX_PARTS", "EmailError", "ParsedEmail", "parse_email"]

HEADERS = {"from": "From", "to": "To", "subject": "Subject", "date": "Date", "message_id": "Message-ID"}


class EmailError(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class ParsedEmail:
    text: str  # the subject, a blank line, the readable body
    headers: dict[str, str | None]  # from, to, subject, date, message_id


def parse_email(raw: bytes) -> ParsedEmail:
    """The readable text and the routing headers of one message, or an EmailError with a code."""
    if not raw.strip():
        raise EmailError("email_empty", "the e-mail is empty")
    message = parse(raw)
    if not message.keys():
        raise EmailError("email_malformed", "no RFC 5322 header lines were found")
    if message.is_multipart():
        for count, _ in enumerate(message.walk(), start=1):
            if count > MAX_PARTS:
                raise EmailError("email_too_many_parts", f"the e-mail has more than {MAX_PARTS} MIME parts")
    headers = {name: header(message, field) for name, field in HEADERS.items()}
    text = f"{headers['subject'] or ''}\n\n{body_text(message)}".strip()
    if not text:
        raise EmailError("email_no_text", "the e-mail has no subject and no text/plain or text/html part")
    return ParsedEmail(text=text, headers=headers)
