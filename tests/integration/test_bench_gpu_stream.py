"""The GPU bench's end-to-end section on the CPU: two worker processes in one consumer group, a
burst sent by two producer processes, C then D. Throwaway random heads; no timing is asserted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_two_worker_processes_share_the_stream(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    from bertstream.bench.gpu import run_gpu_stream_suite
    from tests.integration.test_bench_smoke import _random_heads
    from worker.connection import KafkaConnection

    out = run_gpu_stream_suite(
        KafkaConnection((kafka_bootstrap,)),
        redis_url,
        _random_heads(tmp_path / "heads"),
        "cpu",
        {"workers": [2], "events": 40, "producers": 2},
        lambda m: None,
        deadline=time.monotonic() + 600,
        timeout_s=180,
    )
    assert out["mps"]["used"] is False and out["skipped"] == []
    (row,) = out["rows"]
    assert row["workers"] == 2 and row["producers"] == 2 and out["partitions"] == 2
    assert row["C"]["events"] == row["D"]["events"] == 40
    assert row["C"]["cached"] == 0 and row["D"]["cached"] == 40
    assert row["C"]["producers"] == 2 and 0 < row["C"]["produce_seconds"] <= row["C"]["seconds"]
    assert all(n > 0 for n in row["events_in_per_worker"])  # the group spread the input over both
    assert row["dead_letters"] == 0
    assert row["C_over_one_worker"] is None  # no 1-worker row in this run
