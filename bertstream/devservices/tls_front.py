"""TLS in front of a plaintext local service: socat terminates TLS and forwards to the backend port.

The embedded broker uses it to serve Kafka over TLS, because tansu 0.6.0 cannot (its CLI refuses
``--cert`` with ``--key``). socat (Debian package ``socat``, built with OpenSSL) is the field-made
terminator; it forks one child per connection.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bertstream.devservices.process import EmbeddedProcess


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS server: its certificate (chain), its key, and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def socat_binary() -> Path:
    found = shutil.which("socat")
    if found is None:
        raise RuntimeError("TLS for the embedded broker needs socat: apt-get install socat (make setup does)")
    return Path(found)


class TlsFront(EmbeddedProcess):
    """Accept TLS on ``host:port`` and forward the plaintext to ``backend_port`` on loopback.

    With ``client_auth``, only clients whose certificate ``tls.ca`` signed get through (mutual TLS).
    """

    name = "tls-front"

    def __init__(
        self,
        tls: TlsFiles,
        backend_port: int,
        host: str = "127.0.0.1",
        port: int | None = None,
        client_auth: bool = False,
    ) -> None:
        self.binary = socat_binary()
        self.tls = tls
        self.backend_port = backend_port
        self.client_auth = client_auth
        super().__init__(host, port)

    def _command(self) -> Sequence[str]:
        verify = f"verify=1,cafile={self.tls.ca}" if self.client_auth else "verify=0"
        listen = (
            f"OPENSSL-LISTEN:{self.port},bind={self.host},reuseaddr,fork,"
            f"cert={self.tls.cert},key={self.tls.key},{verify}"
        )
        return [str(self.binary), "-d", listen, f"TCP:127.0.0.1:{self.backend_port}"]

    def _probe(self) -> bool:
        return True  # listening is all there is; the owner probes the service through it
