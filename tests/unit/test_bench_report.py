"""The bench table's new rows and targets: FLOP utilization, the sustainable rate, the multilingual encoder."""

from __future__ import annotations

from typing import Any

from bertstream.bench.report import cores_text, format_table, ratios, targets, utilization_lines


def _report(sustainable: float | None = 420.0, fraction: float = 0.31) -> dict[str, Any]:
    peak = 600.0
    report: dict[str, Any] = {
        "meta": {"device": "cpu", "tasks": ["news_topic"]},
        "B": {"precision": "bf16", "batch": 64, "events_per_s": 1000.0, "cpu_seconds_per_event": 0.002, "texts": 64},
        "C": {"events": 2000, "events_per_s": peak, "worker": {"cpu_seconds_per_event": 0.0023}},
        "sustainable": {
            "events_per_s": sustainable,
            "burst_peak_events_per_s": peak,
            "fraction_of_peak": round(sustainable / peak, 3) if sustainable else None,
            "p99_limit_ms": 250.0,
            "steps": [
                {"offered_events_per_s": 420.0, "p99_ms": 120.0, "holds": sustainable is not None},
                {"offered_events_per_s": 510.0, "p99_ms": 900.0, "holds": False},
            ],
        },
        "latency": [
            {
                "fraction": f,
                "of": "sustainable",
                "fraction_of_peak": round(f * 420 / peak, 3),
                "offered_events_per_s": f * 420,
                "achieved_events_per_s": f * 420,
                "p50_ms": 40.0,
                "p95_ms": 80.0,
                "p99_ms": 100.0 + f,
            }
            for f in (0.25, 0.5, 0.75)
        ],
        "utilization": {
            "count_method": "FlopCounterMode",
            "peak_method": "torch.mm",
            "peak": {"bf16": {"flops_per_s": 1.9e12, "n": 2048, "instances": 2, "threads": 1}},
            "rows": [
                {
                    "model": "minilm",
                    "path": "B",
                    "precision": "bf16",
                    "batch": 64,
                    "events_per_s": 1000.0,
                    "flops_per_event": 5.9e8,
                    "achieved_flops_per_s": 5.9e11,
                    "fraction_of_peak": fraction,
                }
            ],
        },
        "multilingual": {
            "model": "multilingual-e5-small",
            "config": "12 layers, hidden 384, vocabulary 250,037",
            "rows": [
                {
                    "precision": "bf16",
                    "language": "zh",
                    "batch": 64,
                    "events_per_s": 300.0,
                    "mean_tokens": 22.0,
                    "tokens_per_s": 6600.0,
                    "per_token_over_minilm": 0.33,
                }
            ],
        },
    }
    report["ratios"] = ratios(report)
    report["targets"] = targets(report)
    return report


def _target(report: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next(t for t in report["targets"] if t["target"].startswith(prefix))


def test_new_targets_pass_and_miss() -> None:
    report = _report()
    assert report["ratios"]["sustainable_over_peak"] == 0.7
    assert _target(report, "sustainable rate")["status"] == "PASS"
    flops = _target(report, "B bf16 FLOP utilization")
    assert flops["status"] == "MISS" and flops["measured"] == 31.0 and flops["want"] == ">= 50%"
    assert _target(_report(fraction=0.55), "B bf16 FLOP utilization")["status"] == "PASS"
    assert _target(_report(sustainable=300.0), "sustainable rate")["status"] == "MISS"


def test_no_step_held_is_a_miss_not_a_blank() -> None:
    report = _report(sustainable=None)
    assert _target(report, "sustainable rate")["status"] == "MISS"
    assert "no step held" in format_table(report)


def test_latency_target_is_at_half_of_the_sustainable_rate() -> None:
    p99 = _target(_report(), "p99 latency")
    assert p99["target"] == "p99 latency at 50% of sustainable" and p99["measured"] == 100.5


def test_table_shows_the_new_rows() -> None:
    table = format_table(_report())
    assert "sustainable rate (p99 <= 250 ms): 420/s = 0.70 of the burst peak 600/s" in table
    assert "420/s p99 120 ms ok, 510/s p99 900 ms no" in table
    assert "(50% of sustainable)" in table
    assert "GEMM peak: bf16 1.90 TFLOP/s (n=2048, 2 x 1 threads)" in table
    assert "31.0% of the bf16 peak" in table
    assert "0.33x MiniLM's per-token rate" in table


def test_multilingual_skip_is_one_line() -> None:
    report = _report()
    report["multilingual"] = {"skipped": "the multilingual encoder is not built"}
    assert "multilingual encoder: skipped: the multilingual encoder is not built" in format_table(report)


def test_older_reports_still_render() -> None:
    """Reports written before these rows: latency points with fraction_of_peak only, no utilization."""
    report = _report()
    for key in ("sustainable", "utilization", "multilingual"):
        report.pop(key)
    report["latency"] = [{**p, "fraction_of_peak": p["fraction"]} for p in report["latency"]]
    for p in report["latency"]:
        p.pop("fraction"), p.pop("of")
    report["targets"] = targets(report)
    assert not any(t["target"].startswith(("sustainable", "B bf16")) for t in report["targets"])
    assert "of C)" in format_table(report)
    assert utilization_lines(None) == []


def test_cores_split_names_the_worker_the_bench_and_the_rest() -> None:
    from bertstream.bench.stream import cores_split, machine_cpu_seconds

    before = {"machine": 100.0, "worker": 10.0, "bench": 5.0}
    after = {"machine": 120.0, "worker": 22.0, "bench": 7.0}
    split = cores_split(before, after, 10.0)
    assert split == {"worker": 1.2, "bench": 0.2, "other": 0.6}
    assert cores_split({**before, "worker": None}, after, 10.0) == {"bench": 0.2, "other": 1.8}
    assert "worker 1.20" in cores_text(split) and "broker, Redis, other 0.60" in cores_text(split)
    assert machine_cpu_seconds() is None or machine_cpu_seconds() > 0
