"""Raw RFC 5322 e-mail in: the subject and the readable body as text, and the routing headers.

Parsed with the standard library's `email` package (`policy.default`). The body is the first
text/plain part, else the first text/html part turned into text (BeautifulSoup on the standard
library's HTML parser). Charsets and transfer encodings are decoded; attachments are skipped.
The work a hostile message can cause is bounded: the message is at most the event size limit,
at most MAX_PARTS parts are looked at, and at most MAX_HTML_CHARS of HTML is parsed.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

MAX_PARTS = 64  # MIME parts looked at; a message with more is refused
MAX_HTML_CHARS = 200_000  # HTML past this is not parsed (the text is capped by the model's windows anyway)
MAX_HEADER_CHARS = 998  # RFC 5322's line limit: longer header values are cut in the output
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
    message = email.message_from_bytes(raw, policy=email.policy.default)
    if not isinstance(message, EmailMessage) or not message.keys():
        raise EmailError("email_malformed", "no RFC 5322 header lines were found")
    parts = [message] if not message.is_multipart() else list(_parts(message))
    headers = {name: _header(message, field) for name, field in HEADERS.items()}
    body = _body(parts)
    subject = headers["subject"] or ""
    text = f"{subject}\n\n{body}".strip()
    if not text:
        raise EmailError("email_no_text", "the e-mail has no subject and no text/plain or text/html part")
    return ParsedEmail(text=text, headers=headers)


def _parts(message: EmailMessage) -> list[EmailMessage]:
    found = []
    for count, part in enumerate(message.walk(), start=1):
        if count > MAX_PARTS:
            raise EmailError("email_too_many_parts", f"the e-mail has more than {MAX_PARTS} MIME parts")
        found.append(part)
    return found


def _header(message: EmailMessage, field: str) -> str | None:
    try:
        value = message.get(field)
    except (ValueError, IndexError, TypeError):  # a header value the parser cannot make sense of
        return None
    if value is None:
        return None
    text = re.sub(r"\s+", " ", str(value)).strip()
    return text[:MAX_HEADER_CHARS] or None


def _body(parts: list[EmailMessage]) -> str:
    readable = [p for p in parts if not p.is_multipart() and not _is_attachment(p)]
    for kind in ("text/plain", "text/html"):
        for part in readable:
            if part.get_content_type() == kind:
                text = _decoded(part)
                if kind == "text/html":
                    text = html_to_text(text)
                if text.strip():
                    return text.strip()
    return ""


def _is_attachment(part: EmailMessage) -> bool:
    return part.get_content_disposition() == "attachment"


def _decoded(part: EmailMessage) -> str:
    """The part's text: transfer encoding undone, charset decoded (unknown charsets as Latin-1)."""
    payload: Any = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # a charset name Python does not know
        return payload.decode("latin-1")


def html_to_text(html: str) -> str:
    """Visible text of an HTML body: scripts, styles and comments dropped, whitespace collapsed."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html[:MAX_HTML_CHARS], "html.parser")
    for tag in soup(["script", "style", "head", "title"]):
        tag.decompose()
    text = soup.get_text(separator=" ")
    return re.sub(r"[ \t\r\f\v]+", " ", re.sub(r"\n\s*\n+", "\n\n", text)).strip()
