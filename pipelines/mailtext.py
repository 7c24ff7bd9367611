"""The text a model reads from a raw RFC 5322 e-mail: the subject, a blank line, the readable body.

A pure function of the message bytes (standard library `email`, `policy.default`; BeautifulSoup
on the standard library's HTML parser for HTML bodies), with the same rules as
``worker/email_input.py``: the body is the first text/plain part, else the first text/html part
turned into visible text (script, style, head and title dropped); transfer encodings and charsets
are decoded (unknown charsets as Latin-1); attachments are skipped. It lives in ``pipelines`` so
the training data loaders (``pipelines.training.datasets``) and the worker can share it: a head
must be trained on what the worker will feed it.

Bounded work: at most `MAX_PARTS` MIME parts are looked at (the rest are ignored here; the
worker refuses such messages) and at most `MAX_HTML_CHARS` of HTML is parsed.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from typing import Any

MAX_PARTS = 64
MAX_HTML_CHARS = 200_000
MAX_HEADER_CHARS = 998


def parse(raw: bytes) -> EmailMessage:
    """The message parsed with `policy.default` (never raises on malformed input)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def header(message: EmailMessage, field: str) -> str | None:
    """One header's decoded value, whitespace collapsed and cut at `MAX_HEADER_CHARS`, or None."""
    try:
        value = message.get(field)
    except (ValueError, IndexError, TypeError):  # a header value the parser cannot make sense of
        return None
    if value is None:
        return None
    text = re.sub(r"\s+", " ", str(value)).strip()
    return text[:MAX_HEADER_CHARS] or None


def body_text(message: EmailMessage) -> str:
    """The first non-empty text/plain part, else the first text/html part as visible text, else ''."""
    parts = [message] if not message.is_multipart() else [p for _, p in zip(range(MAX_PARTS), message.walk())]
    readable = [p for p in parts if not p.is_multipart() and p.get_content_disposition() != "attachment"]
    for kind in ("text/plain", "text/html"):
        for part in readable:
            if part.get_content_type() == kind:
                text = decoded(part)
                if kind == "text/html":
                    text = html_to_text(text)
                if text.strip():
                    return text.strip()
    return ""


def mail_text(raw: bytes, headers: tuple[str, ...] = ()) -> str:
    """Subject + blank line + readable body (what the worker gives the model); '' when neither exists.

    `headers`: extra header fields (e.g. ``("From",)``) put first, one ``Name: value`` line each,
    for experiments; the worker reads none.
    """
    message = parse(raw)
    subject = header(message, "Subject") or ""
    text = f"{subject}\n\n{body_text(message)}".strip()
    extra = [f"{field}: {value}" for field in headers if (value := header(message, field))]
    if extra and text:
        text = "\n".join(extra) + "\n\n" + text
    return text


def decoded(part: EmailMessage) -> str:
    """The part's text: transfer encoding undone, charset decoded (unknown charsets as Latin-1)."""
    try:
        payload: Any = part.get_payload(decode=True) or b""
    except (ValueError, TypeError, AssertionError):  # a broken transfer encoding
        payload = b""
    if isinstance(payload, str):
        return payload
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
