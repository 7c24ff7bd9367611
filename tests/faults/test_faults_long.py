"""Long fault tests (`make faults`): 10k events with 5 kills, a 30 s Redis outage and more. Figures go to reports/faults.jsonl.

Light pipeline (heads spam + sentiment, short texts), 4 partitions, session timeout 6 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults import scenarios
from tests.faults.harness import FaultRun

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def test_kill9_repeatedly_during_10k_stream(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    run = FaultRun(kafka_bootstrap, redis_url, tmp_path, partitions=4)
    fig = scenarios.crash_restart(run, n=10_000, rate=80, kills=5, distinct=2000, seed=11, name="kill9_10k")
    assert fig.values["lost"] == 0


def test_two_workers_kill_one(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    run = FaultRun(kafka_bootstrap, redis_url, tmp_path, partitions=4)
    fig = scenarios.two_workers_kill_one(run, n=3000, rate=60, distinct=1000, name="two_workers_kill_one")
    assert fig.values["lost"] == 0


def test_sigterm_mid_stream(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    run = FaultRun(kafka_bootstrap, redis_url, tmp_path, partitions=4)
    fig = scenarios.graceful_stop(run, n=3000, rate=80, distinct=1000, grace_s=30, name="sigterm_3k")
    assert fig.values["lost"] == 0


def test_redis_outage_30s(kafka_bootstrap: str, tmp_path: Path) -> None:
    from bertstream.devservices.redis_server import EmbeddedRedis

    password = "soak-" + os.urandom(4).hex()
    with EmbeddedRedis(password=password) as server:
        run = FaultRun(kafka_bootstrap, server.url, tmp_path, partitions=4)
        fig = scenarios.redis_outage(
            run, server, n=4000, rate=60, distinct=4000, outage_s=30, password=password, name="redis_outage_30s"
        )
    assert fig.values["lost"] == 0


def test_broker_restart_twice(tmp_path: Path, redis_url: str) -> None:
    from bertstream.devservices.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        run = FaultRun(broker.bootstrap, redis_url, tmp_path, partitions=4)
        fig = scenarios.broker_restart(
            run, broker, before=1000, after=1000, rate=100, distinct=500, name="broker_restart_1k"
        )
    assert fig.values["lost_after_restart"] == 0
