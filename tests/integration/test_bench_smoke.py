"""The bench's end-to-end path (C, D, long texts, events scaling, paced latency, RSS) on a tiny feed.

Throwaway random heads keep it independent of the committed ones; no timing is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _random_heads(root: Path) -> list[str]:
    import torch

    from pipelines.heads import Head, HeadSpec, save_head

    torch.manual_seed(0)
    out = []
    for name, labels in (
        ("news_topic", ["acq", "crude", "earn", "trade"]),
        ("sentiment", ["negative", "neutral", "positive"]),
    ):
        save_head(Head(HeadSpec(name=name, labels=labels, input_dim=384)), root / name)
        out.append(str(root / name))
    return out


@pytest.mark.timeout(180)
def test_bench_end_to_end_path(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    from bertstream.bench import data as bench_data
    from bertstream.bench.report import format_table, ratios, targets, write_report
    from bertstream.bench.stream import run_stream_suite
    from worker.connection import KafkaConnection

    heads = _random_heads(tmp_path / "heads")
    stream = run_stream_suite(
        KafkaConnection((kafka_bootstrap,)),
        redis_url,
        heads,
        bench_data.short_texts,
        bench_data.long_texts,
        events=30,
        long_events=2,
        scaling=[10, 30],
        load_fractions=[0.5],
        load_seconds=1.0,
        timeout_s=120,
        search_steps=2,
    )
    for phase in ("C", "D", "long"):
        assert stream[phase]["events_per_s"] > 0, phase
        assert stream[phase]["seconds"] > 0, phase
    assert stream["C"]["events"] == stream["D"]["events"] == 30
    assert stream["C"]["cached"] == 0  # cold: unique texts
    assert stream["D"]["cached"] == 30  # warm: the same texts again
    assert [s["events"] for s in stream["events_scaling"]] == [10, 30]
    assert all(s["events_per_s"] > 0 for s in stream["events_scaling"])
    found = stream["sustainable"]
    assert 1 <= len(found["steps"]) <= 2 and found["burst_peak_events_per_s"] == stream["C"]["events_per_s"]
    assert found["steps"][0]["offered_events_per_s"] == round(0.7 * stream["C"]["events_per_s"], 2)
    (point,) = stream["latency"]
    for key in ("offered_events_per_s", "achieved_events_per_s", "p50_ms", "p95_ms", "p99_ms"):
        assert point[key] > 0, key
    assert point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
    # Latency is measured at half of the sustainable rate, or of the burst peak when no step held.
    base = found["events_per_s"] or stream["C"]["events_per_s"]
    assert point["of"] == ("sustainable" if found["events_per_s"] else "burst peak")
    assert point["offered_events_per_s"] == round(max(1.0, 0.5 * base), 2)
    assert stream["worker_peak_rss_mb"] > 0
    assert stream["C"]["worker"]["cpu_seconds_per_event"] > 0  # the worker's CPU from /proc
    assert stream["dead_letters"] == 0

    report = {"meta": {"device": "cpu"}, "C": stream.pop("C"), "D": stream.pop("D"), **stream}
    report["ratios"] = ratios(report)
    report["B"] = {"events_per_s": 100.0, "cpu_seconds_per_event": 0.004}  # B is the model suite's, not run here
    report["ratios"] = ratios(report)
    report["targets"] = targets(report)
    assert {t["target"].split(" ")[0] for t in report["targets"]} >= {"C/A", "C/B", "D", "CPU-seconds"}
    assert report["ratios"]["C_cpu_over_B_cpu"] == round(report["C"]["worker"]["cpu_seconds_per_event"] / 0.004, 3)
    assert "CPU per event: B 4.00 ms" in format_table(report)
    out = tmp_path / "bench.json"
    png = write_report(report, out)
    assert json.loads(out.read_text())["C"]["events"] == 30
    assert png.is_file() and png.stat().st_size > 0
    assert "C  worker end to end" in format_table(report)
