"""kafka-python helpers: client settings from our config, topic creation, lag from the high watermark."""
from __future__ import annotations

import ssl
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from worker.config import Settings


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """SASL and TLS settings passed through to kafka-python clients."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_brokers.split(","),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_ssl_cafile:
        kwargs["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile:
        kwargs["ssl_certfile"] = str(settings.kafka_ssl_certfile)
    if settings.kafka_ssl_keyfile:
        kwargs["ssl_keyfile"] = str(settings.kafka_ssl_keyfile)
    if settings.kafka_sasl_mechanism:
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    return kwargs


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if "SSL" not in settings.kafka_security_protocol:
        return None
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
    return context


def ensure_topics(settings: Settings, topics: list[str], partitions: int | None = None, timeout_s: float = 15.0) -> None:
    """Create missing topics (existing ones are left as they are)."""
    admin = KafkaAdminClient(request_timeout_ms=int(timeout_s * 1000), **client_kwargs(settings))
    try:
        existing = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            try:
                admin.create_topics(
                    [NewTopic(t, num_partitions=partitions or settings.kafka_partitions, replication_factor=1) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another worker of the group created it first
    finally:
        admin.close()
