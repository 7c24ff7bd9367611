"""One Kafka connection: the settings (brokers, TLS, SASL) turned into each client's kwargs.

The worker (Faust/aiokafka), the start-up checks and admin helpers (kafka-python), and the
tools all connect through `KafkaConnection`, so that TLS and SASL are honoured everywhere.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from worker.config import Settings


@dataclass(frozen=True)
class KafkaConnection:
    brokers: tuple[str, ...]
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaConnection:
        return cls(
            brokers=tuple(settings.kafka_brokers.split(",")),
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=settings.kafka_sasl_password,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
        )

    def with_brokers(self, brokers: str) -> KafkaConnection:
        """The same security settings against other bootstrap servers (host:port[,...])."""
        return replace(self, brokers=tuple(b.strip() for b in brokers.split(",") if b.strip()))

    @property
    def bootstrap(self) -> str:
        return ",".join(self.brokers)

    @property
    def uses_tls(self) -> bool:
        return "SSL" in self.security_protocol

    def _password(self) -> str | None:
        return self.sasl_password.get_secret_value() if self.sasl_password else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the SSL protocols (None otherwise); raises if a file cannot be loaded."""
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None)
        return context

    def kafka_python(self) -> dict[str, Any]:
        """kwargs for kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        kwargs: dict[str, Any] = {"bootstrap_servers": list(self.brokers), "security_protocol": self.security_protocol}
        if self.ssl_cafile:
            kwargs["ssl_cafile"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            kwargs["ssl_certfile"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            kwargs["ssl_keyfile"] = str(self.ssl_keyfile)
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self._password()
        return kwargs

    def aiokafka(self) -> dict[str, Any]:
        """kwargs for aiokafka's AIOKafkaProducer and AIOKafkaConsumer."""
        kwargs: dict[str, Any] = {"bootstrap_servers": list(self.brokers), "security_protocol": self.security_protocol}
        if self.uses_tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self._password()
        return kwargs

    def faust_broker(self) -> str:
        """Faust's broker URL list: kafka://a:9092;kafka://b:9092."""
        return ";".join(f"kafka://{b}" for b in self.brokers)

    def faust_credentials(self) -> Any:
        """faust.SASLCredentials, faust.SSLCredentials, or None for PLAINTEXT."""
        import faust

        context = self.ssl_context()
        if self.sasl_mechanism:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self._password() or "",
                ssl_context=context,
                mechanism=self.sasl_mechanism,
            )
        return faust.SSLCredentials(context) if context else None

    def confluent(self) -> dict[str, Any]:
        """A librdkafka configuration dict for confluent-kafka's Producer, Consumer and AdminClient."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol.lower(),
        }
        if self.ssl_cafile:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            conf["ssl.certificate.location"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            conf["ssl.key.location"] = str(self.ssl_keyfile)
        if self.sasl_mechanism:
            conf["sasl.mechanisms"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self._password()
        return conf


def ensure_topics(
    conn: KafkaConnection, topics: list[str], partitions: int, replication_factor: int = -1, timeout_s: float = 15.0
) -> None:
    """Create missing topics (existing ones are left as they are); a replication factor of -1 is
    the broker's default.replication.factor (brokers since Kafka 2.4)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(request_timeout_ms=int(timeout_s * 1000), **conn.kafka_python())
    try:
        existing = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            try:
                admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another worker of the group created it first
    finally:
        admin.close()
