"""Shared pytest fixtures: a Kafka-protocol broker, a Redis, unique topic names.

Everything here is cheap to import (no torch, no transformers); the services start lazily, once per
session, only when a test asks for them.

- ``kafka_bootstrap``: ``$BERTSTREAM_TEST_KAFKA`` if set, else an embedded tansu broker.
- ``redis_url``: ``$BERTSTREAM_TEST_REDIS_URL`` if set, else db 15 of a Redis answering on
  127.0.0.1:6379, else an embedded ``redis-server``.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Make the repo's packages importable however pytest is invoked (plain `pytest` does not put the
# rootdir on sys.path when the package is not installed).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker for the whole session."""
    external = os.environ.get("BERTSTREAM_TEST_KAFKA")
    if external:
        yield external
        return
    from worker.embedded_broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap


def _redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1, retry=None)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 -- refused, auth required, timeout...: not usable
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis for the whole session (tests must use their own keys; it may be shared)."""
    external = os.environ.get("BERTSTREAM_TEST_REDIS_URL")
    if external:
        yield external
        return
    if _redis_answers(LOCAL_REDIS_URL):
        yield LOCAL_REDIS_URL
        return
    from worker.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def topic_name() -> Callable[..., str]:
    """Factory for unique topic names: ``topic_name()`` or ``topic_name("in")`` -> ``"in-<hex>"``."""

    def make(prefix: str = "test") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make
