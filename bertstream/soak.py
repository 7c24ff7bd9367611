"""Soak test: stream at half the peak rate for a long time; report RSS over time, losses, dead letters.

    python -m bertstream.soak                      # 30 minutes, embedded broker + Redis, light pipeline
    python -m bertstream.soak --minutes 2 --rate 50

Starts a real worker process (`bertstream worker`), measures its peak rate with a burst (unless
--rate is given), then streams at half of it. Every --sample-s it records the worker's RSS and the
events produced / delivered. At the end it waits for the stream to drain and reports:
RSS growth from the end of the warm-up to the end (must stay under --max-rss-growth, 5%), events
lost (must be 0) and dead letters. Exit code 1 when either check fails. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from worker.connection import KafkaConnection

DEFAULT_HEADS = "spam,sentiment"
TEXTS = [
    "Shares of the chip maker jumped after strong quarterly results",
    "URGENT you have won a 1000 dollar gift card, reply WIN to claim",
    "Meeting moved to 3pm tomorrow, same room as last week",
    "The storm closed schools across the region for a second day",
    "Thanks so much for the lovely dinner, we had a great time",
    "The delivery was late again and nobody answered the phone",
    "Free entry in a weekly competition to win cup final tickets",
    "Can you send me the slides before the review on Friday",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bertstream.soak",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=30.0, help="how long to stream")
    p.add_argument("--rate", type=float, default=0.0, help="events per second; 0: half the peak rate measured first")
    p.add_argument("--burst", type=int, default=2000, help="events of the peak-rate burst (when --rate is 0)")
    p.add_argument(
        "--distinct",
        type=int,
        default=5000,
        help="distinct texts; the stream cycles through them (after one cycle: cache hits)",
    )
    p.add_argument("--bad-every", type=int, default=500, help="one malformed event every N (0: none)")
    p.add_argument("--heads", default=DEFAULT_HEADS, help="heads of the soak pipeline")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument(
        "--warmup-fraction",
        type=float,
        default=0.1,
        help="RSS growth is measured from the end of this first part of the run",
    )
    p.add_argument("--max-rss-growth", type=float, default=0.05, help="fail above this RSS growth")
    p.add_argument(
        "--brokers",
        default=os.environ.get("BERTSTREAM_KAFKA_BROKERS"),
        help="Kafka bootstrap servers (default: an embedded tansu broker)",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("BERTSTREAM_REDIS_URL"),
        help="Redis URL (default: an embedded redis-server)",
    )
    p.add_argument("--drain-timeout-s", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=Path("reports/soak.json"), help="JSON report")
    return p.parse_args(argv)


class Reader(threading.Thread):
    """Counts outputs (ids) and dead letters of the soak topics."""

    def __init__(self, kafka: KafkaConnection, topics: list[str], dead_topic: str) -> None:
        super().__init__(daemon=True, name="soak-reader")
        self.kafka, self.topics, self.dead_topic = kafka, topics, dead_topic
        self.ids: set[str] = set()
        self.outputs = 0
        self.dead = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            *self.topics,
            **self.kafka.kafka_python(),
            group_id=f"soak-reader-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        try:
            while not self.stop.is_set():
                for tp, records in consumer.poll(timeout_ms=500).items():
                    with self.lock:
                        for r in records:
                            if tp.topic == self.dead_topic:
                                self.dead += 1
                            else:
                                self.outputs += 1
                                self.ids.add(json.loads(r.value)["id"])
        finally:
            consumer.close(autocommit=False)

    def delivered(self) -> int:
        with self.lock:
            return len(self.ids)


class Feeder:
    def __init__(self, kafka: KafkaConnection, topic: str, run: str, distinct: int, bad_every: int) -> None:
        from kafka import KafkaProducer

        self.producer = KafkaProducer(acks="all", linger_ms=5, **kafka.kafka_python())
        self.topic, self.run, self.distinct, self.bad_every = topic, run, distinct, bad_every
        self.sent = 0
        self.good_ids: list[str] = []
        self.bad = 0

    def send(self, count: int) -> None:
        futures = []
        for _ in range(count):
            i = self.sent
            self.sent += 1
            if self.bad_every and i % self.bad_every == self.bad_every - 1:
                futures.append(self.producer.send(self.topic, b'{"text": "broken', key=f"k{i % 64}".encode()))
                self.bad += 1
                continue
            event_id = f"{self.run}-{i}"
            j = i % self.distinct
            text = f"{TEXTS[j % len(TEXTS)]} ({self.run} {j})"
            futures.append(
                self.producer.send(
                    self.topic, json.dumps({"id": event_id, "text": text}).encode(), key=f"k{i % 64}".encode()
                )
            )
            self.good_ids.append(event_id)
        self.producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=60)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    from bertstream.devservices.process import free_port
    from bertstream.devservices.stack import proc_memory_mb, services, start_ready_worker, worker_env
    from worker.connection import ensure_topics

    run = uuid.uuid4().hex[:8]
    echo = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    with ExitStack() as stack:
        kafka, redis_url, _ = services(stack, echo, args.brokers, args.redis_url)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bertstream-soak-")))
        topics = {k: f"soak-{run}-{k}" for k in ("in", "out", "dead")}
        heads = [h.strip() for h in args.heads.split(",") if h.strip()]
        pipelines = tmp / "pipelines.toml"
        pipelines.write_text(
            f'[pipelines.soak]\ninput = "{topics["in"]}"\noutput = "{topics["out"]}"\n'
            f'dead_letter = "{topics["dead"]}"\nheads = {json.dumps(heads)}\n'
        )
        ensure_topics(kafka, list(topics.values()), args.partitions)
        port = free_port()
        env = worker_env(
            kafka.bootstrap, redis_url, f"soak-{run}", port, pipelines_file=str(pipelines), session_timeout_s="6"
        )
        log_path = Path(args.out).with_suffix(".worker.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")
        echo(f"starting the worker (log: {log_path})…")
        proc = start_ready_worker(stack, env, ["soak"], log_path, port)
        reader = Reader(kafka, [topics["out"], topics["dead"]], topics["dead"])
        reader.start()
        stack.callback(reader.stop.set)
        feeder = Feeder(kafka, topics["in"], run, args.distinct, args.bad_every)

        peak = None
        rate = args.rate
        if rate <= 0:
            echo(f"measuring the peak rate with a burst of {args.burst} events…")
            t0 = time.monotonic()
            feeder.send(args.burst)
            while reader.delivered() < len(feeder.good_ids) and time.monotonic() - t0 < args.drain_timeout_s:
                time.sleep(0.2)
            peak = reader.delivered() / (time.monotonic() - t0)
            rate = max(1.0, peak / 2)
            echo(f"peak ≈ {peak:.0f} events/s; streaming at {rate:.0f} events/s")

        duration = args.minutes * 60
        samples: list[dict[str, Any]] = []
        t_start = time.monotonic()
        next_sample = 0.0
        sent_at_start = feeder.sent
        echo(f"{'t_s':>7} {'rss_mb':>8} {'sent':>8} {'delivered':>10} {'dead':>6}")
        while (elapsed := time.monotonic() - t_start) < duration:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with code {proc.returncode}; see {log_path}")
            due = int(elapsed * rate) - (feeder.sent - sent_at_start)
            if due > 0:
                feeder.send(due)
            if elapsed >= next_sample:
                sample = {
                    "t_s": round(elapsed, 1),
                    "rss_mb": proc_memory_mb(proc.pid),
                    "sent": feeder.sent,
                    "delivered": reader.delivered(),
                    "dead_letters": reader.dead,
                }
                samples.append(sample)
                echo(
                    f"{sample['t_s']:>7} {sample['rss_mb'] or 0:>8.1f} {sample['sent']:>8} {sample['delivered']:>10} {sample['dead_letters']:>6}"
                )
                next_sample += args.sample_s
            time.sleep(0.05)
        echo("draining…")
        t0 = time.monotonic()
        while reader.delivered() < len(feeder.good_ids) or reader.dead < feeder.bad:
            if time.monotonic() - t0 > args.drain_timeout_s:
                break
            time.sleep(0.5)
        samples.append(
            {
                "t_s": round(time.monotonic() - t_start, 1),
                "rss_mb": proc_memory_mb(proc.pid),
                "sent": feeder.sent,
                "delivered": reader.delivered(),
                "dead_letters": reader.dead,
            }
        )
        with reader.lock:
            lost = [i for i in feeder.good_ids if i not in reader.ids]
            duplicates = reader.outputs - len(reader.ids)
        rss = [s["rss_mb"] for s in samples if s["rss_mb"] is not None]
        warm = max(1, int(len(rss) * args.warmup_fraction))
        tail = max(1, int(len(rss) * 0.1))
        baseline = statistics.median(rss[warm : warm + tail]) if len(rss) > warm else rss[0]
        end = statistics.median(rss[-tail:])
        growth = (end - baseline) / baseline if baseline else 0.0
        return {
            "minutes": args.minutes,
            "peak_rate": peak and round(peak, 1),
            "rate": round(rate, 1),
            "events_sent": feeder.sent,
            "good_events": len(feeder.good_ids),
            "malformed_sent": feeder.bad,
            "delivered": len(feeder.good_ids) - len(lost),
            "lost": len(lost),
            "lost_examples": lost[:10],
            "duplicates": duplicates,
            "dead_letters": reader.dead,
            "rss_mb": {
                "start": rss[0],
                "after_warmup": baseline,
                "end": end,
                "max": max(rss),
                "growth": round(growth, 4),
            },
            "samples": samples,
            "worker_log": str(log_path),
            "ok": not lost and growth < args.max_rss_growth and reader.dead == feeder.bad,
        }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = soak(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    rss = report["rss_mb"]
    print(
        f"soak: {report['minutes']} min at {report['rate']} events/s (peak {report['peak_rate']}); "
        f"events {report['events_sent']}, lost {report['lost']}, duplicates {report['duplicates']}, "
        f"dead letters {report['dead_letters']}/{report['malformed_sent']}; "
        f"RSS {rss['after_warmup']:.0f} → {rss['end']:.0f} MiB ({rss['growth'] * 100:+.1f}%, max {rss['max']:.0f}); "
        f"{'OK' if report['ok'] else 'FAILED'} — {args.out}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
