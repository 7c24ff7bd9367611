"""Shared pytest fixtures: a Kafka-protocol broker, a Redis, unique topic names.

Everything here is cheap to import (no torch, no transformers); the services start lazily, once per
session, only when a test asks for them.

- ``kafka_bootstrap``: ``$BERTSTREAM_TEST_KAFKA`` if set, else an embedded tansu broker.
- ``tls_files``: a test CA and certificates (trustme) for the TLS tests.
- ``redis_url``: ``$BERTSTREAM_TEST_REDIS_URL`` if set, else db 15 of a Redis answering on
  127.0.0.1:6379, else an embedded ``redis-server``.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Make the repo's packages importable however pytest is invoked (plain `pytest` does not put the
# rootdir on sys.path when the package is not installed).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

if TYPE_CHECKING:
    from bertstream.devservices.tls_front import TlsFiles

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker for the whole session."""
    external = os.environ.get("BERTSTREAM_TEST_KAFKA")
    if external:
        yield external
        return
    from bertstream.devservices.broker import EmbeddedBroker

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
    from bertstream.devservices.redis_server import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def topic_name() -> Callable[..., str]:
    """Factory for unique topic names: ``topic_name()`` or ``topic_name("in")`` -> ``"in-<hex>"``."""

    def make(prefix: str = "test") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, Path]:
    """A server certificate for 127.0.0.1 signed by a test CA (client.pem/client-key.pem beside it, for
    mutual TLS), and the PEM of another, unrelated CA."""
    import trustme

    from bertstream.devservices.tls_front import TlsFiles

    base = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    server.private_key_pem.write_to_path(str(base / "key.pem"))
    (base / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    trustme.CA().cert_pem.write_to_path(str(base / "other-ca.pem"))
    client = ca.issue_cert("bertstream-worker")
    client.private_key_pem.write_to_path(str(base / "client-key.pem"))
    (base / "client.pem").write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    return TlsFiles(base / "cert.pem", base / "key.pem", base / "ca.pem"), base / "other-ca.pem"
