"""C and D: the real worker process end to end, plus latency at a paced offered load.

One worker child process (bertstream.devservices.worker_process), or several in one
consumer group, runs a pipeline of the bench's own (fresh topics, a unique consumer group) against
the real broker and Redis. A collector thread
reads the output and dead-letter topics by partition assignment (no group join) and stamps every
output id with its arrival time; every phase produces its events, then waits for their ids.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Self

from bertstream.bench.data import events as make_events
from bertstream.bench.sustain import find_sustainable
from bertstream.devservices.process import free_port, log_tail, stop_process_group
from bertstream.devservices.stack import peak_rss_mb, worker_env
from bertstream.devservices.worker_process import start_worker_process, wait_ready
from worker.connection import KafkaConnection, ensure_topics

METRIC_SUMS = (
    "bertstream_batch_size_sum",
    "bertstream_batch_size_count",
    "bertstream_model_duration_seconds_sum",
    "bertstream_batch_duration_seconds_sum",
    "bertstream_cache_hits_total",
    "bertstream_cache_misses_total",
    "bertstream_events_in_total",
)


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{q:g}_ms": 0.0 for q in qs}
    ordered = sorted(values)
    out = {}
    for q in qs:
        # Linear interpolation between closest ranks (numpy's default).
        pos = (len(ordered) - 1) * q / 100
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        out[f"p{q:g}_ms"] = round(1000 * (ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)), 2)
    return out


class _Collector(threading.Thread):
    """Arrival times of output ids (perf_counter), read by partition assignment from offset 0."""

    def __init__(self, kafka: KafkaConnection, topics: list[str], dead_topic: str) -> None:
        super().__init__(name="bench-collector", daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            **kafka.kafka_python(), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10, max_poll_records=2000
        )
        parts = []
        for topic in topics + [dead_topic]:
            deadline = time.monotonic() + 30
            found = self.consumer.partitions_for_topic(topic)
            while not found and time.monotonic() < deadline:
                time.sleep(0.2)
                found = self.consumer.partitions_for_topic(topic)
            if not found:
                raise RuntimeError(f"topic {topic} has no partitions")
            parts += [TopicPartition(topic, p) for p in sorted(found)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self.dead_topic = dead_topic
        self.arrived: dict[str, tuple[float, bool]] = {}  # id -> (arrival, cached)
        self.worker_latency_ms: dict[str, float] = {}  # id -> the output's own latency_ms (record timestamp -> built)
        self.dead_letters = 0
        self.cond = threading.Condition()
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                batch = self.consumer.poll(timeout_ms=50)
                now = time.perf_counter()
                if not batch:
                    continue
                with self.cond:
                    for tp, records in batch.items():
                        for record in records:
                            if tp.topic == self.dead_topic:
                                self.dead_letters += 1
                                continue
                            doc = json.loads(record.value)
                            if doc["id"] not in self.arrived:
                                self.arrived[doc["id"]] = (now, bool(doc.get("cached")))
                                self.worker_latency_ms[doc["id"]] = float(doc.get("latency_ms") or 0.0)
                    self.cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting phase
            self.error = exc
            with self.cond:
                self.cond.notify_all()
        finally:
            self.consumer.close()

    def wait_for(self, ids: list[str], timeout_s: float) -> dict[str, tuple[float, bool]]:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                if self.error is not None:
                    raise RuntimeError(f"output collector failed: {self.error!r}")
                missing = sum(1 for i in ids if i not in self.arrived)
                if not missing:
                    return {i: self.arrived[i] for i in ids}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{missing}/{len(ids)} outputs missing after {timeout_s:.0f}s "
                        f"({self.dead_letters} dead letters seen)"
                    )
                self.cond.wait(min(left, 0.5))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


class StreamBench:
    """Worker child processes (one by default; `workers` in one consumer group) and the bench's
    topics; use as a context manager."""

    def __init__(
        self,
        kafka: KafkaConnection,
        redis_url: str,
        heads: list[str],
        log: Callable[[str], None] = lambda m: None,
        timeout_s: float = 600,
        worker_settings: dict[str, str] | None = None,
        workers: int = 1,
        partitions: int | None = None,
        producers: int = 1,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.kafka, self.redis_url, self.heads, self.log = kafka, redis_url, heads, log
        self.timeout_s = timeout_s
        self.worker_settings = worker_settings or {}
        self.workers = max(1, workers)
        self.producers = max(1, producers)  # processes that send a burst (bertstream/bench/producers.py)
        self.extra_env = extra_env or {}  # plain environment variables for the workers (e.g. CUDA MPS)
        # Every process of the group needs an input partition of its own; None: the worker's default.
        self.partitions = max(partitions or 1, self.workers) if partitions or self.workers > 1 else None
        self.run_id = uuid.uuid4().hex[:8]
        self.topics = {k: f"bench-{self.run_id}-{k}" for k in ("in", "out", "dead", "idle-in", "idle-out", "idle-dead")}
        self._stack = ExitStack()
        self.proc: Any = None  # the first worker
        self.procs: list[Any] = []
        self.web_ports: list[int] = []

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        from kafka import KafkaProducer

        self.workdir = Path(tempfile.mkdtemp(prefix="bertstream-bench-"))
        pipelines_file = self.workdir / "pipelines.toml"
        # The worker as deployed runs several pipelines (news and email by default): a second,
        # idle one here, so that C would show it if an idle pipeline slowed a busy one.
        pipelines_file.write_text(
            "".join(
                f'[pipelines.{name}]\ninput = "{self.topics[prefix + "in"]}"\noutput = "{self.topics[prefix + "out"]}"\n'
                f'dead_letter = "{self.topics[prefix + "dead"]}"\nheads = {json.dumps(self.heads)}\n'
                for name, prefix in (("bench", ""), ("idle", "idle-"))
            )
        )
        settings = dict(self.worker_settings)
        if self.partitions:
            settings["kafka_partitions"] = str(self.partitions)
            ensure_topics(self.kafka, list(self.topics.values()), self.partitions, timeout_s=30)
        self.log_paths = [
            self.workdir / (f"worker-{i + 1}.log" if self.workers > 1 else "worker.log") for i in range(self.workers)
        ]
        self.log_path = self.log_paths[0]
        what = "the worker" if self.workers == 1 else f"{self.workers} worker processes in one group"
        self.log(f"end to end: starting {what} (log {self.log_path})")
        started = time.perf_counter()
        self._stack.callback(_stop_workers, self.procs)
        for log_path in self.log_paths:  # all at once: their start-ups overlap
            port = free_port()
            env = worker_env(
                self.kafka.bootstrap,
                self.redis_url,
                f"bertstream-bench-{self.run_id}",
                port,
                pipelines_file=str(pipelines_file),
                session_timeout_s="6",
                **settings,
            )
            env.update(self.extra_env)
            self.procs.append(start_worker_process(env, ["bench", "idle"], log_path))
            self.web_ports.append(port)
        for proc, port, log_path in zip(self.procs, self.web_ports, self.log_paths):
            wait_ready(proc, port, log_path, timeout_s=self.timeout_s)
        self.proc, self.web_port = self.procs[0], self.web_ports[0]
        self.start_seconds = round(time.perf_counter() - started, 2)
        self.collector = _Collector(self.kafka, [self.topics["out"]], self.topics["dead"])
        self.collector.start()
        self._stack.callback(self.collector.stop)
        self.producer = KafkaProducer(acks="all", linger_ms=5, **self.kafka.kafka_python())
        self._stack.callback(self.producer.close)
        # Warm-up: the group is joined and every path has run once before anything is timed.
        from bertstream.bench.data import short_texts

        self.burst(short_texts(16, f"{self.run_id}-warmup"), "warmup")
        # Several processes: until every one has taken events (the group's rebalances are over).
        deadline = time.monotonic() + self.timeout_s
        round_ = 0
        while self.workers > 1 and not all(m.get("bertstream_events_in_total", 0) > 0 for m in self.each_metrics()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every one of {self.workers} workers took events within {self.timeout_s:.0f}s")
            round_ += 1
            time.sleep(1.0)
            self.burst(short_texts(16 * self.workers, f"{self.run_id}-warmup{round_}"), f"warmup{round_}")

    def _check_alive(self) -> None:
        for proc, log_path in zip(self.procs, self.log_paths):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with code {proc.returncode}:\n{log_tail(log_path)}")

    def _wait(self, ids: list[str]) -> dict[str, tuple[float, bool]]:
        try:
            return self.collector.wait_for(ids, self.timeout_s)
        except TimeoutError:
            self._check_alive()
            raise

    def each_metrics(self) -> list[dict[str, float]]:
        """Per worker: sums of its batch-size and model-time histograms and counters (empty if unreadable)."""
        return [_read_metrics(port) for port in self.web_ports]

    def metrics(self) -> dict[str, float]:
        """The workers' metric sums added up (for deltas around a phase); empty when one is unreadable."""
        each = self.each_metrics()
        if not each or not all(each):
            return {}
        return {name: sum(m[name] for m in each) for name in METRIC_SUMS}

    def cpu_seconds(self) -> float | None:
        """CPU time of all worker processes together."""
        each = [cpu_seconds(p.pid) for p in self.procs]
        return None if any(c is None for c in each) else sum(c for c in each if c is not None)

    def cpu_snapshot(self) -> dict[str, float | None]:
        """CPU seconds so far of the machine, the workers and this process (the load generator)."""
        return {"machine": machine_cpu_seconds(), "worker": self.cpu_seconds(), "bench": cpu_seconds(os.getpid())}

    def burst(self, texts: list[str], label: str) -> dict[str, Any]:
        """All events produced up front; seconds from the first send to the last output's arrival."""
        values = make_events(texts, f"{self.run_id}-{label}")
        before = self.metrics()
        snapshot = self.cpu_snapshot()
        if self.producers > 1:
            from bertstream.bench.producers import send_parallel

            started, produce_seconds = send_parallel(
                self.kafka.kafka_python(), self.topics["in"], [v for _, v in values], self.producers
            )
        else:
            started = time.perf_counter()
            for _, value in values:
                self.producer.send(self.topics["in"], value)
            self.producer.flush()
            produce_seconds = time.perf_counter() - started
        arrived = self._wait([i for i, _ in values])
        last = max(t for t, _ in arrived.values())
        seconds = last - started
        after = self.metrics()
        snapshot_after = self.cpu_snapshot()
        cpu_before, cpu_after = snapshot["worker"], snapshot_after["worker"]
        result = {
            "events": len(values),
            "seconds": round(seconds, 4),
            "events_per_s": round(len(values) / seconds, 2),
            "cached": sum(1 for _, c in arrived.values() if c),
            # Sending alone: when it is close to `seconds`, the producer set the pace, not the worker.
            "produce_seconds": round(produce_seconds, 4),
            "producers": self.producers,
        }
        result.update(_worker_stats(before, after, seconds))
        if cpu_before is not None and cpu_after is not None:
            # The CPU the worker processes got: cores busy on average over the phase (includes the
            # tail after the last output, up to the /metrics read).
            result.setdefault("worker", {})["cpu_seconds"] = round(cpu_after - cpu_before, 3)
            result["worker"]["cores_busy"] = round((cpu_after - cpu_before) / seconds, 3)
            result["worker"]["cpu_seconds_per_event"] = round((cpu_after - cpu_before) / len(values), 6)
        result["cores"] = cores_split(snapshot, snapshot_after, seconds)
        return result

    def paced(self, texts: list[str], rate: float, label: str) -> dict[str, Any]:
        """Events sent at a fixed rate; latency per event = output arrival - its send time (by id)."""
        values = make_events(texts, f"{self.run_id}-{label}")
        sent: dict[str, float] = {}
        snapshot = self.cpu_snapshot()
        started = time.perf_counter()
        for i, (event_id, value) in enumerate(values):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent[event_id] = time.perf_counter()
            self.producer.send(self.topics["in"], value)
        self.producer.flush()
        arrived = self._wait(list(sent))
        latencies = [arrived[i][0] - sent[i] for i in sent]
        span = max(t for t, _ in arrived.values()) - started
        # The worker's own view: input record timestamp -> output built (excludes output delivery and our read).
        inside = percentiles([self.collector.worker_latency_ms.get(i, 0.0) / 1000 for i in sent])
        return {
            "offered_events_per_s": round(rate, 2),
            "events": len(values),
            "achieved_events_per_s": round(len(values) / span, 2),
            **percentiles(latencies),
            "max_ms": round(1000 * max(latencies), 2),
            "worker_side": inside,
            "cores": cores_split(snapshot, self.cpu_snapshot(), span),
        }

    def peak_rss_mb(self) -> float | None:
        return round(peak_rss_mb(self.proc.pid), 1) if self.proc is not None and peak_rss_mb(self.proc.pid) else None


def _stop_workers(procs: list[Any]) -> None:
    """SIGTERM every worker at once, then wait for each (one after the other takes seconds per worker)."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    for proc in procs:
        stop_process_group(proc, 30.0)


def _read_metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {
        name: sum(float(m) for m in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, flags=re.MULTILINE))
        for name in METRIC_SUMS
    }


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (all its threads), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far (all but idle and iowait), from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cores_split(before: dict[str, float | None], after: dict[str, float | None], seconds: float) -> dict[str, float]:
    """Average cores busy over a phase: the workers, the bench process (producer and consumer) and
    everything else (broker, Redis, other jobs), from two `cpu_snapshot`s; parts it cannot read are left out."""
    busy = {
        k: (after[k] - before[k]) / seconds  # type: ignore[operator]
        for k in before
        if before[k] is not None and after.get(k) is not None and seconds > 0
    }
    if "machine" in busy:
        busy["other"] = busy.pop("machine") - busy.get("worker", 0.0) - busy.get("bench", 0.0)
    return {k: round(v, 3) for k, v in busy.items()}


def _worker_stats(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, Any]:
    if not before or not after:
        return {}
    batches = after["bertstream_batch_size_count"] - before["bertstream_batch_size_count"]
    events = after["bertstream_batch_size_sum"] - before["bertstream_batch_size_sum"]
    model = after["bertstream_model_duration_seconds_sum"] - before["bertstream_model_duration_seconds_sum"]
    handling = after["bertstream_batch_duration_seconds_sum"] - before["bertstream_batch_duration_seconds_sum"]
    return {
        "worker": {
            "batches": int(batches),
            "mean_batch": round(events / batches, 2) if batches else 0.0,
            "model_seconds": round(model, 4),
            "model_seconds_per_wall_second": round(model / seconds, 3) if seconds else 0.0,
            "batch_handling_seconds": round(handling, 4),
        }
    }


def run_stream_suite(
    kafka: KafkaConnection,
    redis_url: str,
    heads: list[str],
    short: Callable[[int, str], list[str]],
    long: Callable[[int, str], list[str]],
    events: int,
    long_events: int,
    scaling: list[int],
    load_fractions: list[float],
    load_seconds: float,
    log: Callable[[str], None] = lambda m: None,
    timeout_s: float = 600,
    worker_settings: dict[str, str] | None = None,
    search_steps: int = 5,
    p99_limit_ms: float = 250.0,
) -> dict[str, Any]:
    """C (cold), D (warm), end-to-end long texts, events scaling, the sustainable rate (a search of
    up to `search_steps` paced steps of `load_seconds`), latency at `load_fractions` of that rate
    (of the burst peak when no step held or there was no search), peak RSS."""
    out: dict[str, Any] = {}
    with StreamBench(kafka, redis_url, heads, log, timeout_s, worker_settings) as bench:
        out["worker_start_seconds"] = bench.start_seconds
        tag = bench.run_id
        log(f"end to end: C, {events} short events, cold cache")
        texts = short(events, f"{tag}-c")
        out["C"] = bench.burst(texts, "c")
        log(f"end to end: D, the same {events} texts again, warm cache")
        out["D"] = bench.burst(texts, "d")
        if long_events:
            log(f"end to end: {long_events} long events, cold cache")
            out["long"] = bench.burst(long(long_events, f"{tag}-long"), "long")
        out["events_scaling"] = []
        for n in scaling:
            if n == events:
                out["events_scaling"].append({**out["C"], "events": n})
                continue
            log(f"end to end: {n} short events, cold cache")
            out["events_scaling"].append(bench.burst(short(n, f"{tag}-n{n}"), f"n{n}"))
        out["events_scaling"].sort(key=lambda r: r["events"])
        peak = out["C"]["events_per_s"]
        base, of = peak, "burst peak"
        if search_steps:
            log(
                f"end to end: sustainable rate (p99 <= {p99_limit_ms:.0f} ms), up to {search_steps} paced steps "
                f"of {load_seconds:.0f} s from {peak:,.0f}/s (burst peak)"
            )
            steps = itertools.count()

            def measure(rate: float) -> dict[str, Any]:
                i = next(steps)
                return bench.paced(short(max(20, int(rate * load_seconds)), f"{tag}-s{i}"), rate, f"s{i}")

            out["sustainable"] = find_sustainable(measure, peak, log, limit_ms=p99_limit_ms, max_steps=search_steps)
            if out["sustainable"]["events_per_s"]:
                base, of = out["sustainable"]["events_per_s"], "sustainable"
        out["latency"] = []
        for fraction in load_fractions:
            rate = max(1.0, base * fraction)
            n = max(20, int(rate * load_seconds))
            log(f"end to end: latency at {fraction:.0%} of the {of} rate ({rate:.0f} events/s, {n} events)")
            point = bench.paced(short(n, f"{tag}-l{fraction}"), rate, f"l{int(fraction * 100)}")
            out["latency"].append(
                {"fraction": fraction, "of": of, "fraction_of_peak": round(rate / peak, 3) if peak else None, **point}
            )
        out["worker_peak_rss_mb"] = bench.peak_rss_mb()
        out["dead_letters"] = bench.collector.dead_letters
    return out
