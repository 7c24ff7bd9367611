"""An embedded Redis for the demo and the tests: ``redis-server`` from PATH on a loopback port.

No persistence (``--save "" --appendonly no``): nothing survives ``stop()``/``restart()``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from bertstream.devservices.process import EmbeddedProcess
from bertstream.devservices.tls_front import TlsFiles


def redis_server_binary() -> Path:
    """Path of ``redis-server`` on PATH."""
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server not found on PATH: install redis-server (apt-get install redis-server) "
            "or set BERTSTREAM_REDIS_URL"
        )
    return Path(found)


class EmbeddedRedis(EmbeddedProcess):
    """``redis-server`` on a loopback port, memory only, optional ``requirepass``; with ``tls``, TLS only."""

    name = "redis"

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, password: str | None = None, tls: TlsFiles | None = None
    ) -> None:
        self.binary = redis_server_binary()
        self.password = password
        self.tls = tls
        super().__init__(host, port)

    @property
    def url(self) -> str:
        """``redis://[:password@]host:port/0``, or ``rediss://…/0?ssl_ca_certs=CA`` with ``tls``."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={quote(str(self.tls.ca), safe='/')}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def _command(self) -> Sequence[str]:
        cmd = [
            str(self.binary),
            *self._listen(),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.tmpdir),
            "--daemonize",
            "no",
            "--logfile",
            "",  # log to stdout, which goes to the log file
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def _listen(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.tls.cert),
            "--tls-key-file",
            str(self.tls.key),
            "--tls-ca-cert-file",
            str(self.tls.ca),
            "--tls-auth-clients",
            "no",
        ]

    def _probe(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2, retry=None)
        try:
            return bool(client.ping())
        finally:
            client.close()
