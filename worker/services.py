"""Start-up checks: the broker and Redis must answer, or the worker stops with one clear line."""
from __future__ import annotations

import redis
from kafka.errors import KafkaError

from worker.config import Settings
from worker.kafka_admin import ensure_topics
from worker.logs import redact


class ServiceUnavailable(RuntimeError):
    pass


def check_broker(settings: Settings, topics: list[str], timeout_s: float = 15.0) -> None:
    """Reach the broker and create the pipelines' topics where they are missing."""
    try:
        ensure_topics(settings, topics, timeout_s=timeout_s)
    except (KafkaError, OSError, ValueError) as exc:
        raise ServiceUnavailable(
            f"Kafka broker {settings.kafka_brokers} unreachable ({type(exc).__name__}): "
            "start one (`bertstream broker`) or set BERTSTREAM_KAFKA_BROKERS"
        ) from None


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
        raise ServiceUnavailable(
            f"Redis {redact(url)} unreachable ({type(exc).__name__}: {redact(str(exc))}): "
            "start one, fix BERTSTREAM_REDIS_URL, or set BERTSTREAM_CACHE_TTL_S=0 to run without the cache"
        ) from None
