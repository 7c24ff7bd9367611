"""`bertstream bench --gpu` on the CPU: every model path at tiny sizes, the no-GPU line, MPS
start/stop (with a stand-in for nvidia-cuda-mps-control), the time budget, the table.

The end-to-end part (C and D with several worker processes) is in
tests/integration/test_bench_gpu_stream.py. No timing is asserted.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bertstream.bench.gpu import check_device, format_gpu_table, gpu_sizes, run_gpu_model_suite, run_gpu_stream_suite
from bertstream.bench.mps import mps_daemon

HEADS = ["news_topic", "sentiment"]
TINY = {"budgets": [64], "min_seconds": 0.01, "peak_seconds": 0.0, "peak_sizes": [32]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA device")
def test_no_gpu_says_so_and_measures_nothing(tmp_path: Path) -> None:
    from bertstream.bench.main import bench

    out = tmp_path / "bench-gpu.json"
    result = CliRunner().invoke(bench, ["--gpu", "--out", str(out)])
    assert result.exit_code == 1
    assert "no GPU" in result.output and "no CUDA device" in result.output and "--device cpu" in result.output
    assert not out.exists()


def test_cpu_is_a_dry_run_device() -> None:
    assert check_device("cpu") == "cpu"
    assert gpu_sizes("cpu")["workers"] == [1, 2]
    assert gpu_sizes("cuda")["workers"] == [1, 2, 4, 8]
    assert gpu_sizes("cuda", events=123)["events"] == 123


def test_model_section_runs_every_path_on_the_cpu() -> None:
    seen: list[str] = []
    out = run_gpu_model_suite(HEADS, HEADS, "cpu", TINY, seen.append, precisions=["bf16"], base_sized=True)
    assert set(out["peak"]) == {"bf16"} and out["peak"]["bf16"]["flops_per_s"] > 0
    assert out["errors"] == []
    paths = [(r["path"], r["model"], r["precision"], r["token_budget"]) for r in out["rows"]]
    assert paths == [
        ("B", "all-MiniLM-L6", "bf16", 64),
        ("model pass only", "all-MiniLM-L6", "bf16", 64),
        ("BERT-base-sized", "BERT-base-sized (random weights)", "bf16", 64),
    ]
    for row in out["rows"]:
        assert row["texts_per_call"] == 2  # 64 tokens / 32 per short text
        assert row["events_per_s"] > 0 and row["tokens_per_s"] > 0
        assert row["flops_per_event"] > 0 and row["fraction_of_peak"] is not None
    minilm, base = out["rows"][0], out["rows"][2]
    assert base["flops_per_event"] > 5 * minilm["flops_per_event"]  # 12 x 768 against 6 x 384
    table = format_gpu_table({"meta": {"device": "cpu"}, "model": out, "stream": {}})
    assert "DRY RUN on cpu" in table
    assert "B  all-MiniLM-L6, bf16, 64 tok/pass (2 texts/call)" in table
    assert "all-MiniLM-L6, model pass only, bf16" in table
    assert "throughput does not depend on weight values" in table
    assert "target: B (model only) >= 20,000 events/s on the GPU" in table and "n/a (dry run)" in table


def test_stream_section_skips_what_the_time_budget_does_not_allow() -> None:
    sizes = {"workers": [1, 2], "events": 10, "producers": 1}
    out = run_gpu_stream_suite(None, "", HEADS, "cpu", sizes, lambda m: None, deadline=time.monotonic() - 1)
    assert out["rows"] == [] and len(out["skipped"]) == 2
    assert out["mps"] == {"used": False, "note": "MPS not used: device cpu is not a GPU"}


def test_table_reports_failures_and_worker_rows() -> None:
    stream = {
        "partitions": 8,
        "mps": {"used": True, "note": "MPS used: a control daemon of the bench's own"},
        "rows": [
            {
                "workers": n,
                "C": {"events": 100, "events_per_s": 100.0 * n},
                "D": {"events": 100, "events_per_s": 900.0},
                "C_over_one_worker": float(n),
            }
            for n in (1, 2)
        ],
        "skipped": ["4 worker processes: skipped, the time budget is spent"],
    }
    table = format_gpu_table({"meta": {"device": "cuda", "gpu": "H200"}, "model": {"error": "OOM"}, "stream": stream})
    assert "DRY RUN" not in table and "model rows: FAILED: OOM" in table
    assert "target:" not in table  # no B row, no verdict
    assert "C  2 worker process(es), cold cache, 100 events" in table and "(2.00x 1 worker)" in table
    assert "MPS used" in table and "4 worker processes: skipped" in table


def _control(tmp_path: Path, exit_code: int = 0) -> Path:
    """A stand-in for nvidia-cuda-mps-control that records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-cuda-mps-control"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-d" ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> {tmp_path}/calls; exit {exit_code}; fi\n'
        f'read line; echo "command $line $CUDA_MPS_PIPE_DIRECTORY" >> {tmp_path}/calls\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_mps_daemon_started_for_the_workers_and_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{_control(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    with mps_daemon("cuda") as mps:
        assert mps["used"] is True
        pipe = mps["env"]["CUDA_MPS_PIPE_DIRECTORY"]
        assert Path(pipe).is_dir() and Path(mps["env"]["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
        assert (tmp_path / "calls").read_text().splitlines() == [f"start {pipe}"]
    assert (tmp_path / "calls").read_text().splitlines() == [f"start {pipe}", f"command quit {pipe}"]


def test_mps_daemon_that_fails_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{_control(tmp_path, exit_code=3)}{os.pathsep}{os.environ['PATH']}")
    with mps_daemon("cuda") as mps:
        assert mps["used"] is False and mps["env"] == {}
        assert "exited 3" in mps["note"]
    assert len((tmp_path / "calls").read_text().splitlines()) == 1  # no quit for a daemon that never started


def test_no_mps_control_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with mps_daemon("cuda") as mps:
        assert mps["used"] is False and "not on PATH" in mps["note"]


def test_gpu_target_verdict_on_a_cuda_report() -> None:
    row = {
        "path": "B",
        "model": "all-MiniLM-L6",
        "precision": "fp16",
        "token_budget": 65536,
        "texts_per_call": 2048,
        "events_per_s": 25000.0,
        "tokens_per_s": 7e5,
        "achieved_flops_per_s": 1.6e13,
        "fraction_of_peak": 0.02,
    }
    slow = {**row, "events_per_s": 9000.0, "token_budget": 16384}
    table = format_gpu_table({"meta": {"device": "cuda"}, "model": {"rows": [slow, row]}, "stream": {}})
    assert "best 25,000/s (fp16, 65,536 tok/pass)  PASS" in table
    table = format_gpu_table({"meta": {"device": "cuda"}, "model": {"rows": [slow], "errors": ["x, bf16: OOM"]}})
    assert "best 9,000/s (fp16, 16,384 tok/pass)  MISS" in table and "FAILED: x, bf16: OOM" in table


def test_a_failing_row_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    import bertstream.bench.base

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory (stand-in)")

    monkeypatch.setattr(bertstream.bench.base, "base_sized_classifier", out_of_memory)
    out = run_gpu_model_suite(HEADS, HEADS, "cpu", TINY, lambda m: None, precisions=["fp32"], base_sized=True)
    assert [r["path"] for r in out["rows"]] == ["B", "model pass only"]
    assert out["errors"] == ["BERT-base-sized (random weights), fp32: RuntimeError: CUDA out of memory (stand-in)"]
