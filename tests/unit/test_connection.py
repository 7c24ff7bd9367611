"""KafkaConnection: the one translation of the Kafka settings into each client's kwargs."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import faust
import pytest

from worker.config import load_settings
from worker.connection import KafkaConnection


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("pem")
    key, cert = base / "key.pem", base / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def sasl_ssl(pem: tuple[Path, Path]) -> KafkaConnection:
    key, cert = pem
    return KafkaConnection.from_settings(
        load_settings(
            kafka_brokers="b1:9093,b2:9093",
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="alice",
            kafka_sasl_password="pw-123",
            kafka_ssl_cafile=cert,
            kafka_ssl_certfile=cert,
            kafka_ssl_keyfile=key,
        )
    )


def test_every_client_gets_the_same_security(pem: tuple[Path, Path]) -> None:
    key, cert = pem
    conn = sasl_ssl(pem)
    kp = conn.kafka_python()
    assert kp["bootstrap_servers"] == ["b1:9093", "b2:9093"] and kp["security_protocol"] == "SASL_SSL"
    assert (kp["sasl_mechanism"], kp["sasl_plain_username"], kp["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "alice",
        "pw-123",
    )
    assert (kp["ssl_cafile"], kp["ssl_certfile"], kp["ssl_keyfile"]) == (str(cert), str(cert), str(key))
    ak = conn.aiokafka()
    assert ak["security_protocol"] == "SASL_SSL" and isinstance(ak["ssl_context"], ssl.SSLContext)
    assert (ak["sasl_mechanism"], ak["sasl_plain_username"], ak["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "alice",
        "pw-123",
    )
    cf = conn.confluent()
    assert cf["bootstrap.servers"] == "b1:9093,b2:9093" and cf["security.protocol"] == "sasl_ssl"
    assert (cf["sasl.mechanisms"], cf["sasl.username"], cf["sasl.password"]) == ("SCRAM-SHA-512", "alice", "pw-123")
    assert cf["ssl.ca.location"] == str(cert) and cf["ssl.key.location"] == str(key)
    assert conn.faust_broker() == "kafka://b1:9093;kafka://b2:9093"
    creds = conn.faust_credentials()
    assert isinstance(creds, faust.SASLCredentials) and creds.username == "alice" and creds.password == "pw-123"
    assert str(creds.mechanism).endswith("SCRAM_SHA_512") and isinstance(creds.ssl_context, ssl.SSLContext)
    assert "pw-123" not in repr(conn)


def test_other_brokers_keep_the_security_settings(pem: tuple[Path, Path]) -> None:
    moved = sasl_ssl(pem).with_brokers("c1:9094, c2:9094")
    assert moved.bootstrap == "c1:9094,c2:9094"
    assert moved.kafka_python()["sasl_plain_password"] == "pw-123" and moved.uses_tls


def test_plaintext_and_tls_only(pem: tuple[Path, Path]) -> None:
    plain = KafkaConnection.from_settings(load_settings())
    assert plain.ssl_context() is None and plain.faust_credentials() is None
    assert plain.kafka_python() == {"bootstrap_servers": ["127.0.0.1:9092"], "security_protocol": "PLAINTEXT"}
    assert "ssl_context" not in plain.aiokafka()
    tls = KafkaConnection.from_settings(load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pem[1]))
    assert isinstance(tls.faust_credentials(), faust.SSLCredentials)
    assert "sasl_mechanism" not in tls.kafka_python() and "sasl.mechanisms" not in tls.confluent()
