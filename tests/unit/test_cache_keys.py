"""Cache keying (model version + task set + text) and secret redaction in logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from worker.cache import KEY_PREFIX, cache_key
from worker.logs import _redact_secrets, redact, setup_logging


def test_key_is_deterministic_and_namespaced() -> None:
    key = cache_key("abc123", ["sentiment", "spam"], "hello world")
    assert key == cache_key("abc123", ["sentiment", "spam"], "hello world")
    assert key.startswith(KEY_PREFIX + ":abc123:")
    assert "hello world" not in key  # the text is hashed, never stored in the key


def test_key_depends_on_model_version() -> None:
    assert cache_key("v1", ["spam"], "hi") != cache_key("v2", ["spam"], "hi")


def test_key_depends_on_task_set_not_order() -> None:
    assert cache_key("v", ["spam", "sentiment"], "hi") == cache_key("v", ["sentiment", "spam"], "hi")
    assert cache_key("v", ["spam"], "hi") != cache_key("v", ["spam", "sentiment"], "hi")
    assert cache_key("v", ["spam"], "hi") != cache_key("v", ["sentiment"], "hi")


@pytest.mark.parametrize("other", ["hi ", "Hi", "hi\n", "h i", "hı"])
def test_key_depends_on_exact_text(other: str) -> None:
    assert cache_key("v", ["spam"], "hi") != cache_key("v", ["spam"], other)


def test_key_handles_any_unicode() -> None:
    assert cache_key("v", ["spam"], "😀 日本語 \t") != cache_key("v", ["spam"], "😀 日本語")


@pytest.mark.parametrize(
    "text,secret,kept",
    [
        ("redis://:pw123@127.0.0.1:6379/0", "pw123", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://user:pw123@cache.example:6380/1", "pw123", "rediss://user:***@cache.example:6380/1"),
        ("connect to redis://default:s3cr%40t@h:1/2 failed", "s3cr%40t", "connect to redis://default:***@h:1/2 failed"),
        ("sasl_ssl://alice:hunter2@broker:9093", "hunter2", "sasl_ssl://alice:***@broker:9093"),
        # A raw '@' in the password: everything up to the last '@' of the authority is hidden.
        ("redis://:p@ss@w0rd@h:6379/0", "ss@w0rd", "redis://:***@h:6379/0"),
        ("redis://u:a@b@h:6379/0 and rediss://:x@y@k:1", "b@h", "redis://u:***@h:6379/0 and rediss://:***@k:1"),
        # Passwords in the query string (redis-py reads ?password=).
        ("redis://h:6379/0?password=pw123", "pw123", "redis://h:6379/0?password=***"),
        ("unix:///run/redis.sock?db=0&password=pw123&x=1", "pw123", "unix:///run/redis.sock?db=0&password=***&x=1"),
        (
            "rediss://h:1/0?ssl_ca_certs=/ca.pem&Password=pw123",
            "pw123",
            "rediss://h:1/0?ssl_ca_certs=/ca.pem&Password=***",
        ),
    ],
)
def test_redact_hides_url_passwords(text: str, secret: str, kept: str) -> None:
    out = redact(text)
    assert secret not in out
    assert out == kept


@pytest.mark.parametrize("text", ["redis://127.0.0.1:6379/0", "http://host:8080/path", "no url here", "a@b.c"])
def test_redact_leaves_passwordless_text_alone(text: str) -> None:
    assert redact(text) == text


def test_processor_masks_secret_keys_and_redacts_urls() -> None:
    event = {
        "event": "connecting",
        "password": "p1",
        "kafka_sasl_password": "p2",
        "client_secret": "p3",
        "api_token": "p4",
        "credentials": {"user": "u"},
        "redis_url": "redis://:p5@host:6379/0",
        "passes": None,  # secret-looking key without a value stays None
        "count": 3,
        "topic": "news.raw",
    }
    out = _redact_secrets(None, "info", dict(event))
    for key in ("password", "kafka_sasl_password", "client_secret", "api_token", "credentials"):
        assert out[key] == "***", key
    assert out["redis_url"] == "redis://:***@host:6379/0"
    assert out["passes"] is None
    assert out["count"] == 3 and out["topic"] == "news.raw" and out["event"] == "connecting"
    assert not any(f"p{i}" in json.dumps(out, default=str) for i in range(1, 6))


@pytest.fixture
def json_logging() -> Iterator[io.StringIO]:
    """setup_logging's real handler and formatter, writing to a buffer instead of stderr."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    setup_logging("INFO", "json")
    buffer = io.StringIO()
    (handler,) = root.handlers
    handler.setStream(buffer)
    yield buffer
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    structlog.reset_defaults()


def test_no_secret_reaches_the_log_stream(json_logging: io.StringIO) -> None:
    structlog.get_logger("t").info(
        "redis connect failed for redis://:topsecret@h:6379/0", url="rediss://u:topsecret@h/0", password="topsecret"
    )
    logging.getLogger("stdlib").warning("stdlib record with redis://:topsecret@h:6379/0")
    err = json_logging.getvalue()
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "topsecret" not in err
    assert lines[0]["password"] == "***"
    assert lines[0]["url"] == "rediss://u:***@h/0"
    assert "redis://:***@h:6379/0" in lines[1]["event"]
