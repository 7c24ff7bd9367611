"""C with the worker's two pipelines: one busy and one idle, or both busy at once.

Run: `.venv/bin/python docs/experiments/c_two_pipelines.py [RUNS] [--both]` (starts an embedded
broker and Redis when none is configured). Default: 2,000 short events to one pipeline while the
other is idle, as `make bench` measures C. `--both`: 2,000 to each pipeline at the same moment;
events/s counts both, from the first send to the last output of either.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack

from bertstream.bench import data as bench_data
from bertstream.bench.main import DEFAULT_HEADS, _resolve_heads
from bertstream.bench.stream import StreamBench, _Collector, _worker_stats

EVENTS = 2000


def both_busy(bench: StreamBench, collector: _Collector, label: str) -> str:
    before = bench.metrics()
    sent = {}
    for _topic, tag in ((bench.topics["in"], "a"), (bench.topics["idle-in"], "b")):
        sent[tag] = bench_data.events(
            bench_data.short_texts(EVENTS, f"{bench.run_id}-{label}{tag}"), f"{bench.run_id}-{label}{tag}"
        )
    started = time.perf_counter()
    for i in range(EVENTS):  # interleaved, so both pipelines get load from the start
        bench.producer.send(bench.topics["in"], sent["a"][i][1])
        bench.producer.send(bench.topics["idle-in"], sent["b"][i][1])
    bench.producer.flush()
    a = bench.collector.wait_for([i for i, _ in sent["a"]], 600)
    b = collector.wait_for([i for i, _ in sent["b"]], 600)
    seconds = max(t for t, _ in list(a.values()) + list(b.values())) - started
    stats = _worker_stats(before, bench.metrics(), seconds)
    return f"{2 * EVENTS / seconds:.1f} events/s over both, mean batch {stats.get('worker', {}).get('mean_batch')}"


def main(runs: int, both: bool) -> None:
    from bertstream.devservices.stack import services

    heads = _resolve_heads(DEFAULT_HEADS)
    with ExitStack() as stack:
        kafka, redis_url, _ = services(stack)
        with StreamBench(kafka, redis_url, heads, timeout_s=600) as bench:
            collector = _Collector(kafka, [bench.topics["idle-out"]], bench.topics["idle-dead"])
            collector.start()
            stack.callback(collector.stop)
            for i in range(runs):
                if both:
                    print(f"both busy, run {i}: {both_busy(bench, collector, f'm{i}')}", flush=True)
                else:
                    r = bench.burst(bench_data.short_texts(EVENTS, f"{bench.run_id}-c{i}"), f"c{i}")
                    print(
                        f"C run {i}: {r['events_per_s']:.1f} events/s, mean batch {r.get('worker', {}).get('mean_batch')}",
                        flush=True,
                    )


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]) if args else 3, "--both" in sys.argv)
