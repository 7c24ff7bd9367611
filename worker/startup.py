"""Start-up checks: the broker and Redis must answer, or the worker stops with one clear line."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kafka.errors import KafkaError

from worker.config import Settings
from worker.connection import KafkaConnection, ensure_topics
from worker.errors import StartupError
from worker.logs import redact


class ServiceUnavailable(StartupError):
    pass


def check_device(settings: Settings) -> None:
    """A CUDA device that this host does not have stops the worker before the model loads."""
    if not settings.device.startswith("cuda"):
        return  # cpu and auto are always there (and need no torch import here)
    from pipelines.numerics import DeviceUnavailable, resolve_device

    try:
        resolve_device(settings.device)
    except DeviceUnavailable as exc:
        raise StartupError(f"BERTSTREAM_DEVICE: {exc}: set BERTSTREAM_DEVICE=cpu or auto") from None


def check_broker(settings: Settings, topics: list[str], timeout_s: float = 15.0) -> None:
    """Reach the broker and create the pipelines' topics where they are missing."""
    conn = KafkaConnection.from_settings(settings)
    try:
        with _quiet("kafka"):
            ensure_topics(
                conn, topics, settings.kafka_partitions, settings.kafka_replication_factor, timeout_s=timeout_s
            )
    except (KafkaError, OSError, ValueError) as exc:
        raise ServiceUnavailable(
            _tls_problem(conn)
            or f"Kafka broker {settings.kafka_brokers} unreachable ({type(exc).__name__}): "
            "start one (`bertstream broker`) or set BERTSTREAM_KAFKA_BROKERS"
        ) from None


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a client library's own error logs (tracebacks included) while our line says it."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _tls_problem(conn: KafkaConnection, timeout_s: float = 5.0) -> str | None:
    """Why a TLS connection to the first broker fails, in words, when TLS is the reason (else None)."""
    if not conn.uses_tls:
        return None
    host, _, port = conn.brokers[0].rpartition(":")
    try:
        context = conn.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        return (
            f"cannot load the Kafka TLS files ({exc}): check BERTSTREAM_KAFKA_SSL_CAFILE, "
            "BERTSTREAM_KAFKA_SSL_CERTFILE and BERTSTREAM_KAFKA_SSL_KEYFILE"
        )
    assert context is not None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                # TLS 1.3 servers reject a missing client certificate after the handshake: read briefly.
                tls.settimeout(1.0)
                try:
                    tls.recv(1)
                except TimeoutError:
                    pass
                return None
    except ssl.SSLCertVerificationError as exc:
        return (
            f"Kafka broker {host}:{port}: TLS certificate not trusted ({exc.verify_message}): "
            "set BERTSTREAM_KAFKA_SSL_CAFILE to the CA that signed it"
        )
    except ssl.SSLError as exc:
        if "CERTIFICATE_REQUIRED" in str(exc.reason):
            return (
                f"Kafka broker {host}:{port} wants a client certificate ({exc.reason}): set "
                "BERTSTREAM_KAFKA_SSL_CERTFILE and BERTSTREAM_KAFKA_SSL_KEYFILE"
            )
        return (
            f"Kafka broker {host}:{port}: TLS handshake failed ({exc.reason}): check that the listener "
            "speaks TLS, BERTSTREAM_KAFKA_SECURITY_PROTOCOL, and a client certificate "
            "(BERTSTREAM_KAFKA_SSL_CERTFILE/_KEYFILE) if the broker wants one"
        )
    except (OSError, ValueError):
        return None  # not a TLS problem: the caller's "unreachable" line says it


def check_redis(settings: Settings, timeout_s: float = 3.0) -> None:
    url = settings.redis_url.get_secret_value()
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    except redis.AuthenticationError as exc:
        raise ServiceUnavailable(
            f"Redis {redact(url)} refused the credentials ({type(exc).__name__}: {redact(str(exc))}): "
            "put the right password in BERTSTREAM_REDIS_URL (redis://:PASSWORD@host:port/db)"
        ) from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ServiceUnavailable(
                f"Redis {redact(url)} needs a password: put it in BERTSTREAM_REDIS_URL (redis://:PASSWORD@host:port/db)"
            ) from None
        raise ServiceUnavailable(f"Redis {redact(url)} answered with an error: {redact(str(exc))}") from None
    except (redis.RedisError, OSError, ValueError) as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise ServiceUnavailable(
                f"Redis {redact(url)}: TLS certificate not trusted: add ?ssl_ca_certs=/path/to/ca.pem "
                "to BERTSTREAM_REDIS_URL"
            ) from None
        raise ServiceUnavailable(
            f"Redis {redact(url)} unreachable ({type(exc).__name__}: {redact(str(exc))}): "
            "start one, fix BERTSTREAM_REDIS_URL, or set BERTSTREAM_CACHE_TTL_S=0 to run without the cache"
        ) from None
