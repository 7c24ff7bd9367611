"""Quick fault tests (part of `make test`): real worker processes, the real broker and Redis.

Light pipeline (heads spam + sentiment, short texts, 2 partitions). The long versions (10,000
events, 30 s outages) are in tests/faults (`make faults`). Figures go to reports/faults.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertstream.devservices.process import free_port, log_tail
from bertstream.devservices.tls_front import TlsFiles
from tests.faults import scenarios
from tests.faults.harness import FaultRun, Figures
from worker.codec import MAX_DEPTH, MAX_ID_CHARS, RAW_PREFIX_BYTES, raw_bytes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _j(**fields: object) -> bytes:
    return json.dumps(fields).encode()


HUGE = b'{"text": "' + b"big " * 2_600_000 + b'"}'  # 10.4 MB

# (name, raw bytes or None, expected dead-letter code): at least 20 kinds of bad input.
BAD = [
    ("invalid_json", b'{"text": "unterminated', "invalid_json"),
    ("trailing_garbage", b'{"text": "hello"} x', "invalid_json"),
    ("nan", b'{"text": "hello", "x": NaN}', "invalid_json"),
    ("huge_integer", b'{"text": "hello", "n": ' + b"9" * 5000 + b"}", "invalid_json"),
    ("not_utf8", b'{"text": "caf\xe9 au lait"}', "not_utf8"),
    ("binary", bytes(range(1, 256)), "not_utf8"),
    ("nul_byte", b'{"text": "hello\x00world"}', "nul_byte"),
    ("empty_message", b"", "empty_message"),
    ("tombstone", None, "empty_message"),
    ("not_object", b'["text", "hello"]', "not_object"),
    ("missing_text", _j(id="x", body="hello"), "missing_text"),
    ("text_number", _j(text=42), "text_not_string"),
    ("text_list", _j(text=["hello"]), "text_not_string"),
    ("empty_text", _j(text=""), "empty_text"),
    ("whitespace_only", _j(text=" \t\n  \u3000"), "blank_text"),
    ("emoji_only", _j(text="😀🔥👍🎉"), "no_words"),
    ("control_characters", _j(text="bell \u0007 and escape \u001b[31m"), "control_characters"),
    ("lone_surrogate", b'{"text": "hi \\ud800 there"}', "invalid_unicode"),
    ("deeply_nested", b'{"text": "hi", "m": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nesting_too_deep"),
    ("nested_just_over", b'{"text": "hi", "m": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}", "nesting_too_deep"),
    ("duplicate_key", b'{"text": "a", "text": "b"}', "duplicate_key"),
    ("id_number", _j(id=7, text="hello"), "id_not_string"),
    ("empty_id", _j(id=" ", text="hello"), "empty_id"),
    ("id_too_long", _j(id="x" * (MAX_ID_CHARS + 1), text="hello"), "id_too_long"),
    ("metadata_list", _j(text="hello", metadata=[1]), "metadata_not_object"),
    ("huge_10mb", HUGE, "too_large"),
]


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


# -- 1 + 5: delivery, per-key order, bad input, truncation, duplicate ids, loopback ----------------


def test_delivery_order_bad_input_and_truncation(kafka_bootstrap: str, redis_url: str, tmp: Path) -> None:
    run = FaultRun(kafka_bootstrap, redis_url, tmp, partitions=3, env={"BERTSTREAM_MAX_WINDOWS": "1"})
    figures = Figures("delivery_and_bad_input")
    with scenarios.observed(run) as col:
        worker = run.start_worker()
        _assert_loopback_only(worker.port)
        # Good events, keyed (12 keys over 3 partitions), bad events in between, in one stream.
        good = [run.event(i, distinct=60) for i in range(300)]
        values, keys, expect = [], [], []
        bad_left = iter(BAD)

        def add_bad(name: str, raw: bytes | None, code: str, key: bytes) -> None:
            values.append(raw)
            keys.append(key)
            expect.append((code, name))

        for i, (eid, value) in enumerate(good):
            values.append(value)
            keys.append(f"k{i % 12}".encode())
            expect.append(("ok", eid))
            if i % 11 == 5 and (nxt := next(bad_left, None)) is not None:
                add_bad(*nxt, key=f"k{i % 12}".encode())
        for nxt in bad_left:
            add_bad(*nxt, key=b"bad")
        # A duplicate id: same id as good[0], another record. A text past the 1-window cap.
        values.append(_j(id=good[0][0], text="the same id again, a different event"))
        keys.append(b"dup")
        expect.append(("duplicate_id", "duplicate_id"))
        long_id = f"{run.run}-long"
        values.append(_j(id=long_id, text="word " * 3000))
        keys.append(b"long")
        expect.append(("ok", long_id))
        where = run.produce(values, keys)

        ids = [eid for code, eid in expect if code == "ok"]
        bad = [(w, code, name, raw) for w, (code, name), raw in zip(where, expect, values) if code != "ok"]
        waited = col.wait_for(ids, 240, dead=len(bad))
        assert not col.missing(ids), log_tail(worker.log)
        # Exactly one output per good event (no fault here), in input order per key.
        assert col.duplicates(ids) == 0
        checked = col.check_key_order({eid: i for i, eid in enumerate(ids)})
        assert checked >= 12
        # Every bad event: its precise code and its original bytes, found by its source offset.
        dead = col.dead_by_offset()
        assert len(col.dead) == len(bad)
        for (partition, offset), code, name, raw in bad:
            letter = dead[(partition, offset)]
            assert letter["error"] == code, f"{name}: {letter['error']} != {code}"
            assert letter["detail"]
            assert letter["source"]["topic"] == run.topics["in"]
            original = raw or b""
            assert letter["raw_size"] == len(original)
            assert letter["raw_sha256"] == hashlib.sha256(original).hexdigest()
            if name == "huge_10mb":
                assert letter["raw_truncated"] is True
                assert len(raw_bytes(letter)) <= RAW_PREFIX_BYTES
                assert original.startswith(raw_bytes(letter))
            else:
                assert letter["raw_truncated"] is False
                assert raw_bytes(letter) == original, name
        # Long text: cut at the cap, and the output says so; short ones are not.
        assert col.outputs[long_id][0]["truncated"] is True
        assert col.outputs[good[1][0]][0]["truncated"] is False
        # The worker is still up and still classifying.
        assert worker.alive()
        eid, value = run.event(10_000, tag="after")
        run.produce([value])
        assert col.wait_for([eid], 60) < 60
        figures.add(
            good=len(ids),
            bad_kinds=len({n for _, _, n, _ in bad}),
            dead_letters=len(col.dead),
            keys_order_checked=checked,
            drain_s=round(waited, 1),
            dead_letter_metric=worker.metric("bertstream_dead_letters_total"),
        )
        assert len({n for _, _, n, _ in bad}) >= 20
    figures.emit()


def _assert_loopback_only(port: int) -> None:
    """The web port listens on 127.0.0.1 only (from /proc/net/tcp: LISTEN sockets on the port)."""
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                listening.append(addr)
    assert listening, f"nothing listens on {port}"
    assert set(listening) == {"0100007F"}, f"web port {port} listens on {listening}, not only 127.0.0.1"


# -- 2: crashes ------------------------------------------------------------------------------------


def test_kill9_at_random_moments_then_restart(kafka_bootstrap: str, redis_url: str, tmp: Path) -> None:
    run = FaultRun(kafka_bootstrap, redis_url, tmp, partitions=2)
    fig = scenarios.crash_restart(run, n=1500, rate=60, kills=2, distinct=300, name="kill9_quick")
    assert fig.values["lost"] == 0


def test_sigterm_finishes_in_flight_batch(kafka_bootstrap: str, redis_url: str, tmp: Path) -> None:
    run = FaultRun(kafka_bootstrap, redis_url, tmp, partitions=2)
    fig = scenarios.graceful_stop(run, n=600, rate=60, distinct=200, grace_s=20, name="sigterm_quick")
    assert fig.values["lost"] == 0


# -- 3 + 7: Redis outage, with AUTH -------------------------------------------------------------------


def test_redis_outage_with_auth(kafka_bootstrap: str, tmp: Path) -> None:
    from bertstream.devservices.redis_server import EmbeddedRedis

    password = "s3cret-" + os.urandom(4).hex()
    with EmbeddedRedis(password=password) as server:
        run = FaultRun(kafka_bootstrap, server.url, tmp, partitions=2)
        fig = scenarios.redis_outage(
            run, server, n=900, rate=60, distinct=900, outage_s=8, password=password, name="redis_outage_quick"
        )
    assert fig.values["lost"] == 0


# -- 4: broker restart ------------------------------------------------------------------------------


def test_broker_restart_reconnects(tmp: Path, redis_url: str) -> None:
    from bertstream.devservices.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        run = FaultRun(broker.bootstrap, redis_url, tmp, partitions=2)
        fig = scenarios.broker_restart(
            run, broker, before=200, after=200, rate=100, distinct=100, name="broker_restart_quick"
        )
    assert fig.values["lost_after_restart"] == 0


# -- 6 + 7: start-up errors: one clear line, exit 2 ---------------------------------------------------


def _run_worker(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bertstream.cli.main", "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _assert_one_clear_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("bertstream: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pipelines.registry import DEFAULT_HEADS_DIR, default_model_dir

    base = tmp_path_factory.mktemp("models")
    model = default_model_dir()
    corrupt = base / "corrupt"
    shutil.copytree(model, corrupt)
    for f in corrupt.glob("*.safetensors"):
        f.write_bytes(b"\x00not a safetensors file" * 10)
    pickle_only = base / "pickle-only"
    pickle_only.mkdir()
    for f in model.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, pickle_only / f.name)
    (pickle_only / "pytorch_model.bin").write_bytes(b"PK\x03\x04 a pickle would run code on load")
    head = base / "spam_3labels"
    shutil.copytree(DEFAULT_HEADS_DIR / "spam", head)
    spec = json.loads((head / "head.json").read_text())
    spec["labels"] = ["ham", "spam", "eggs"]
    (head / "head.json").write_text(json.dumps(spec))
    return {"corrupt": corrupt, "pickle_only": pickle_only, "head_3labels": head, "missing": base / "nope"}


STARTUP_CASES = [
    ("missing_model_dir", {"BERTSTREAM_MODEL_DIR": "{missing}"}, ["config.json"]),
    ("corrupt_model_dir", {"BERTSTREAM_MODEL_DIR": "{corrupt}"}, ["cannot load model"]),
    ("pickle_only_model_dir", {"BERTSTREAM_MODEL_DIR": "{pickle_only}"}, ["safetensors", "pickle"]),
    ("head_label_mismatch", {"HEAD": "{head_3labels}"}, ["labels"]),
    ("unknown_pipeline", {"PIPELINE": "nope"}, ["unknown pipeline 'nope'"]),
    (
        "unreachable_broker",
        {"BERTSTREAM_KAFKA_BROKERS": "127.0.0.1:{free}"},
        ["unreachable", "BERTSTREAM_KAFKA_BROKERS"],
    ),
    ("log_level_verbose", {"BERTSTREAM_LOG_LEVEL": "verbose"}, ["BERTSTREAM_LOG_LEVEL"]),
    ("device_gpu", {"BERTSTREAM_DEVICE": "gpu"}, ["BERTSTREAM_DEVICE"]),
    ("precision_fp64", {"BERTSTREAM_PRECISION": "fp64"}, ["BERTSTREAM_PRECISION"]),
    ("faust_broker_url", {"BERTSTREAM_KAFKA_BROKERS": "SASL_SSL://b:9093"}, ["BERTSTREAM_KAFKA_SECURITY_PROTOCOL"]),
    (
        "unreachable_redis",
        {"BERTSTREAM_REDIS_URL": "redis://127.0.0.1:{free}/0"},
        ["unreachable", "BERTSTREAM_REDIS_URL"],
    ),
]


@pytest.mark.parametrize("case,overrides,needles", STARTUP_CASES, ids=[c[0] for c in STARTUP_CASES])
def test_startup_error_is_one_clear_line(
    case: str,
    overrides: dict[str, str],
    needles: list[str],
    kafka_bootstrap: str,
    redis_url: str,
    bad_models: dict[str, Path],
    tmp: Path,
) -> None:
    values = {k: str(v) for k, v in bad_models.items()} | {"free": str(free_port())}
    overrides = {k: v.format(**values) for k, v in overrides.items()}
    run = FaultRun(kafka_bootstrap, redis_url, tmp, heads=[overrides.pop("HEAD")] if "HEAD" in overrides else None)
    pipeline = overrides.pop("PIPELINE", run.pipeline)
    env = run.env(free_port(), **overrides)
    _assert_one_clear_line(_run_worker(env, "--pipeline", pipeline), *needles)


def test_wrong_redis_password_is_one_clear_line_without_the_secret(kafka_bootstrap: str, tmp: Path) -> None:
    from bertstream.devservices.redis_server import EmbeddedRedis

    with EmbeddedRedis(password="right-" + os.urandom(4).hex()) as server:
        wrong = "wrong-" + os.urandom(4).hex()
        run = FaultRun(kafka_bootstrap, server.url.replace(server.password, wrong), tmp)
        result = _run_worker(run.env(free_port()), "--pipeline", run.pipeline)
        line = _assert_one_clear_line(result, "refused the credentials", "BERTSTREAM_REDIS_URL")
        assert wrong not in result.stderr + result.stdout and server.password not in line
        no_pass = FaultRun(kafka_bootstrap, f"redis://127.0.0.1:{server.port}/0", tmp)
        _assert_one_clear_line(
            _run_worker(no_pass.env(free_port()), "--pipeline", no_pass.pipeline), "BERTSTREAM_REDIS_URL"
        )


# -- 7: TLS for real: Kafka through the embedded broker's TLS front, Redis on --tls-port -------------


def test_worker_over_tls_to_kafka_and_redis(tls_files: tuple[TlsFiles, Path], tmp: Path) -> None:
    """The worker reads, caches and publishes over TLS only; plaintext clients get nothing."""
    import redis
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from bertstream.devservices.broker import EmbeddedBroker
    from bertstream.devservices.redis_server import EmbeddedRedis

    tls, _ = tls_files
    password = "tls-pw-" + os.urandom(4).hex()
    with EmbeddedBroker(tls=tls) as broker, EmbeddedRedis(password=password, tls=tls) as server:
        assert server.url.startswith("rediss://")
        run = FaultRun(
            broker.bootstrap, server.url, tmp, kafka={"kafka_security_protocol": "SSL", "kafka_ssl_cafile": str(tls.ca)}
        )
        with scenarios.observed(run) as col:
            worker = run.start_worker()
            first = [run.event(i, distinct=20) for i in range(20)]
            run.produce([v for _, v in first] + [b'{"text": "unterminated'])
            col.wait_for([e for e, _ in first], 120, dead=1)
            assert not col.missing([e for e, _ in first]), log_tail(worker.log)
            assert [d["error"] for d in col.dead] == ["invalid_json"]
            # The same texts again under new ids: served from Redis over TLS.
            again = [run.event(i, distinct=20, tag="again") for i in range(20)]
            run.produce([v for _, v in again])
            col.wait_for([e for e, _ in again], 120)
            assert not col.missing([e for e, _ in again]), log_tail(worker.log)
            assert (worker.metric("bertstream_cache_hits_total") or 0) >= 20
            assert redis.Redis.from_url(server.url).dbsize() > 0
            assert password not in worker.log_text()
            # A client that does not speak TLS gets no answer from the TLS port.
            with pytest.raises(KafkaError):
                KafkaAdminClient(
                    bootstrap_servers=broker.bootstrap, request_timeout_ms=2000, bootstrap_timeout_ms=2000
                ).list_topics()


def test_tls_startup_errors_are_one_clear_line(tls_files: tuple[TlsFiles, Path], tmp: Path) -> None:
    """An untrusted broker or Redis certificate stops the worker with one line that names the fix."""
    from bertstream.devservices.broker import EmbeddedBroker
    from bertstream.devservices.redis_server import EmbeddedRedis

    tls, other_ca = tls_files
    with EmbeddedBroker(tls=tls) as broker, EmbeddedRedis(tls=tls) as server:
        run = FaultRun(
            broker.bootstrap, server.url, tmp, kafka={"kafka_security_protocol": "SSL", "kafka_ssl_cafile": str(tls.ca)}
        )
        wrong_ca = run.env(free_port(), kafka_ssl_cafile=str(other_ca))
        _assert_one_clear_line(
            _run_worker(wrong_ca, "--pipeline", run.pipeline),
            "TLS certificate not trusted",
            "BERTSTREAM_KAFKA_SSL_CAFILE",
        )
        no_redis_ca = run.env(free_port(), redis_url=server.url.split("?")[0])
        _assert_one_clear_line(
            _run_worker(no_redis_ca, "--pipeline", run.pipeline),
            "TLS certificate not trusted",
            "ssl_ca_certs",
            "BERTSTREAM_REDIS_URL",
        )


# -- 2 + 4: a stop while the broker is down is still bounded ------------------------------------------


def test_sigterm_with_broker_down_exits_within_grace(tmp: Path, redis_url: str) -> None:
    """Deliveries cannot complete (broker gone): the stop still ends within the grace period,
    without acking (exit 3 when a batch was in flight, 0 when none was)."""
    import signal

    from bertstream.devservices.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        run = FaultRun(broker.bootstrap, redis_url, tmp, partitions=2)
        worker = run.start_worker(shutdown_grace_s="8")
        run.produce([run.event(i, distinct=400)[1] for i in range(400)])
        time.sleep(1.0)
        broker.stop()
        time.sleep(1.0)
        t0 = time.monotonic()
        run.kill(worker, signal.SIGTERM)
        try:
            code = worker.proc.wait(timeout=30)
        finally:
            run.stop_all()
        stop_s = time.monotonic() - t0
        fig = Figures("sigterm_broker_down")
        fig.add(
            exit_code=code,
            stop_s=round(stop_s, 1),
            grace_s=8,
            shutdown_timeout_logged=bool(worker.log_events("shutdown_timeout")),
        )
        fig.emit()
        assert stop_s < 8 + 5, log_tail(worker.log)
        assert code in (0, 3), log_tail(worker.log)


def test_worker_with_mutual_tls(tls_files: tuple[TlsFiles, Path], redis_url: str, tmp: Path) -> None:
    """A broker that wants client certificates: the worker's certificate gets it through; without
    one, the worker stops at start-up with one line that names the settings."""
    from bertstream.devservices.broker import EmbeddedBroker

    tls, _ = tls_files
    client = {
        "kafka_ssl_certfile": str(tls.ca.parent / "client.pem"),
        "kafka_ssl_keyfile": str(tls.ca.parent / "client-key.pem"),
    }
    with EmbeddedBroker(tls=tls, client_auth=True) as broker:
        run = FaultRun(
            broker.bootstrap,
            redis_url,
            tmp,
            kafka={"kafka_security_protocol": "SSL", "kafka_ssl_cafile": str(tls.ca), **client},
        )
        no_cert = {
            k: v
            for k, v in run.env(free_port()).items()
            if k not in ("BERTSTREAM_KAFKA_SSL_CERTFILE", "BERTSTREAM_KAFKA_SSL_KEYFILE")
        }
        _assert_one_clear_line(
            _run_worker(no_cert, "--pipeline", run.pipeline), "client certificate", "BERTSTREAM_KAFKA_SSL_CERTFILE"
        )
        with scenarios.observed(run) as col:
            worker = run.start_worker()
            events = [run.event(i, distinct=10) for i in range(10)]
            run.produce([v for _, v in events])
            col.wait_for([e for e, _ in events], 120)
            assert not col.missing([e for e, _ in events]), log_tail(worker.log)
