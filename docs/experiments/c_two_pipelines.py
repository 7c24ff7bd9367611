"""C only: the worker with its two pipelines (one idle), 2,000 short events, N runs (default 3).

Run: `.venv/bin/python docs/experiments/c_two_pipelines.py 3` (starts an embedded broker and Redis
when none is configured). `make bench` measures C with the same worker set-up, among the rest.
"""
from __future__ import annotations

import sys
from contextlib import ExitStack

from worker import bench_data
from worker.bench import DEFAULT_HEADS, _resolve_heads
from worker.bench_stream import StreamBench
from worker.harness import services


def main(runs: int) -> None:
    heads = _resolve_heads(DEFAULT_HEADS)
    with ExitStack() as stack:
        brokers, redis_url, _ = services(stack)
        with StreamBench(brokers, redis_url, heads, timeout_s=600) as bench:
            for i in range(runs):
                r = bench.burst(bench_data.short_texts(2000, f"{bench.run_id}-c{i}"), f"c{i}")
                print(f"C run {i}: {r['events_per_s']:.1f} events/s, mean batch {r.get('worker', {}).get('mean_batch')}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
