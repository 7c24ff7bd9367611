"""Fault scenarios, sized by their callers: quick ones in `make test`, long ones in `make faults`.

Each scenario causes the fault for real (kill -9, SIGTERM, Redis or broker stopped), checks that
every input id comes out, and returns its figures.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bertstream.devservices.process import log_tail
from tests.faults.harness import Collector, FaultRun, Figures, WorkerProc, wait_until


@contextmanager
def observed(run: FaultRun) -> Iterator[Collector]:
    """A collector of the run's outputs and dead letters; on the way out, closed, and the run's workers stopped."""
    col = Collector(run.bootstrap, [run.topics["out"], run.topics["dead"]], run.topics["dead"], client=run.client)
    try:
        yield col
    finally:
        col.close()
        run.stop_all()


class Stream(threading.Thread):
    """Produces n keyed events at `rate`/s in the background; `ids` in input order when done."""

    def __init__(self, run: FaultRun, n: int, rate: float, distinct: int, tag: str = "e") -> None:
        super().__init__(daemon=True, name="stream")
        self.run_, self.n, self.rate, self.distinct, self.tag = run, n, rate, distinct, tag
        self.ids: list[str] = [run.event(i, tag=tag)[0] for i in range(n)]
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.run_.produce_stream(self.n, self.rate, distinct=self.distinct, tag=self.tag)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def finish(self, timeout: float = 600) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        assert self.error is None, f"producer failed: {self.error!r}"


def _check_complete(
    run: FaultRun, col: Collector, ids: list[str], timeout_s: float, figures: Figures, workers: list[WorkerProc]
) -> None:
    drain_s = col.wait_for(ids, timeout_s)
    missing = col.missing(ids)
    dups = col.duplicates(ids)
    figures.add(
        events=len(ids), lost=len(missing), duplicates=dups, drain_s=round(drain_s, 1), dead_letters=len(col.dead)
    )
    logs = "\n".join(f"--- {w.name}\n{log_tail(w.log, 15)}" for w in workers[-2:])
    assert not missing, f"{len(missing)} ids never came out, e.g. {missing[:5]}\n{logs}"
    assert not col.dead, f"unexpected dead letters (a redelivery must not be a duplicate_id): {col.dead[:3]}"
    col.check_stable_redeliveries()
    seq = {eid: i for i, eid in enumerate(ids)}
    figures.add(keys_order_checked=col.check_key_order(seq))


def crash_restart(
    run: FaultRun, *, n: int, rate: float, kills: int, distinct: int, seed: int = 5, name: str = "kill9"
) -> Figures:
    """kill -9 the worker at random moments while a stream runs, `kills` times; restart each time."""
    rnd = random.Random(seed)
    figures = Figures(name)
    with observed(run) as col:
        worker = run.start_worker()
        stream = Stream(run, n, rate, distinct)
        stream.start()
        restart_s = []
        kill_times = []
        duration = n / rate
        for _ in range(kills):
            time.sleep(rnd.uniform(0.1, 0.8) * duration / kills)
            before = sum(1 for _ in col.seen(stream.ids))
            run.kill(worker, signal.SIGKILL)
            kill_times.append(round(time.monotonic(), 1))
            time.sleep(rnd.uniform(0, 1.5))
            t0 = time.monotonic()
            worker = run.start_worker()
            restart_s.append(round(time.monotonic() - t0, 1))
            # Recovery: the first new output after the restart (unless all were out already).
            got = wait_until(
                lambda: (
                    len(col.seen(stream.ids)) > before  # noqa: B023 - called in this iteration
                    or (not stream.is_alive() and len(col.seen(stream.ids)) == n)
                ),
                120,
            )
            figures.values.setdefault("first_output_after_restart_s", []).append(None if got is None else round(got, 1))
        stream.finish()
        figures.add(kills=kills, restart_to_ready_s=restart_s)
        _check_complete(run, col, stream.ids, 300, figures, run.workers)
    figures.emit()
    return figures


def two_workers_kill_one(run: FaultRun, *, n: int, rate: float, distinct: int, name: str = "two_workers") -> Figures:
    """Two workers in one group; kill -9 one mid-stream: the survivor takes over, nothing lost."""
    figures = Figures(name)
    with observed(run) as col:
        w1 = run.start_worker("w1")
        w2 = run.start_worker("w2")
        # Both hold partitions before the stream starts.
        wait_until(
            lambda: (
                (w1.metric("bertstream_events_in_total") or 0) >= 0
                and (w2.metric("bertstream_events_in_total") or 0) >= 0
            ),
            30,
        )
        stream = Stream(run, n, rate, distinct)
        stream.start()
        time.sleep(n / rate / 3)
        in_w1 = w1.metric("bertstream_events_in_total") or 0
        in_w2 = w2.metric("bertstream_events_in_total") or 0
        run.kill(w1, signal.SIGKILL)
        killed_at = time.monotonic()
        stream.finish()
        survivor_before = w2.metric("bertstream_events_in_total") or 0
        _check_complete(run, col, stream.ids, 300, figures, [w2])
        figures.add(
            takeover_to_done_s=round(time.monotonic() - killed_at, 1),
            in_w1_before_kill=in_w1,
            in_w2_before_kill=in_w2,
            in_w2_at_stream_end=survivor_before,
            in_w2_total=w2.metric("bertstream_events_in_total"),
        )
        assert w2.alive()
        assert in_w1 > 0 and in_w2 > 0, "both workers should have had partitions before the kill"
    figures.emit()
    return figures


def graceful_stop(
    run: FaultRun, *, n: int, rate: float, distinct: int, grace_s: float, name: str = "sigterm"
) -> Figures:
    """SIGTERM mid-stream: exit 0 within the grace period; a restarted worker repeats nothing
    already output (the in-flight batch was delivered and committed before exit)."""
    figures = Figures(name)
    with observed(run) as col:
        worker = run.start_worker(shutdown_grace_s=str(grace_s))
        stream = Stream(run, n, rate, distinct)
        stream.start()
        time.sleep(n / rate / 2)
        run.kill(worker, signal.SIGTERM)
        t0 = time.monotonic()
        code = worker.proc.wait(timeout=grace_s + 30)
        stop_s = time.monotonic() - t0
        out_at_stop = len(col.seen(stream.ids))
        time.sleep(2)  # the collector catches up with what was delivered before exit
        delivered_before = col.seen(stream.ids)
        figures.add(
            exit_code=code,
            stop_s=round(stop_s, 2),
            grace_s=grace_s,
            output_before_stop=len(delivered_before),
            output_when_exited=out_at_stop,
            in_flight_finished=len(worker.log_events("shutdown_timeout")) == 0,
        )
        assert code == 0, log_tail(worker.log)
        assert stop_s <= grace_s, f"stop took {stop_s:.1f}s, grace {grace_s}s"
        run.start_worker("after")
        stream.finish()
        _check_complete(run, col, stream.ids, 300, figures, run.workers)
        repeated = col.duplicates(delivered_before)
        figures.add(repeated_after_restart=repeated)
        assert repeated == 0, f"{repeated} outputs delivered before the stop came again after the restart"
    figures.emit()
    return figures


def redis_outage(
    run: FaultRun,
    redis_server: Any,
    *,
    n: int,
    rate: float,
    distinct: int,
    outage_s: float,
    password: str | None = None,
    name: str = "redis_outage",
) -> Figures:
    """Stop the worker's Redis mid-stream for `outage_s`: classification goes on without the cache,
    nothing is lost, bertstream_redis_degraded goes 1 then 0, and the log says redis_degraded."""
    figures = Figures(name)
    with observed(run) as col:
        worker = run.start_worker()
        assert worker.metric("bertstream_redis_degraded") == 0
        stream = Stream(run, n, rate, distinct)
        stream.start()
        time.sleep(min(3.0, n / rate / 4))
        redis_server.stop()  # same port and password on start()
        down_at = time.monotonic()
        seen_at_down = len(col.seen(stream.ids))
        degraded_after = wait_until(lambda: worker.metric("bertstream_redis_degraded") == 1, outage_s)
        time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
        seen_during = len(col.seen(stream.ids)) - seen_at_down
        redis_server.start()
        up_at = time.monotonic()
        recovered_after = wait_until(lambda: worker.metric("bertstream_redis_degraded") == 0, 60)
        stream.finish()
        _check_complete(run, col, stream.ids, 300, figures, [worker])
        figures.add(
            outage_s=outage_s,
            degraded_metric_after_s=None if degraded_after is None else round(degraded_after, 1),
            outputs_during_outage=seen_during,
            recovered_metric_after_s=None if recovered_after is None else round(recovered_after, 1),
            down_to_up_s=round(up_at - down_at, 1),
        )
        assert degraded_after is not None, "bertstream_redis_degraded never went to 1"
        assert recovered_after is not None, "bertstream_redis_degraded never went back to 0"
        assert seen_during > 0, "nothing was classified while Redis was down"
        assert worker.log_events("redis_degraded"), "no redis_degraded log line"
        assert worker.log_events("redis_recovered"), "no redis_recovered log line"
        if password:
            assert password not in worker.log_text(), "the Redis password appears in the worker log"
        figures.add(redis_degraded_log_lines=len(worker.log_events("redis_degraded")))
    figures.emit()
    return figures


def broker_restart(
    run: FaultRun, broker: Any, *, before: int, after: int, rate: float, distinct: int, name: str = "broker_restart"
) -> Figures:
    """Restart the (memory-only) broker under a running worker, recreate the topics, and new events
    are processed without restarting the worker."""
    figures = Figures(name)
    with observed(run) as col:
        worker = run.start_worker()
        first = run.produce_stream(before, rate, distinct=distinct, tag="pre")
        assert col.wait_for(first, 120) < 120 and not col.missing(first), log_tail(worker.log)
        run.reset_producer()
        t0 = time.monotonic()
        broker.restart()
        run.create_topics()
        col.restart()
        second = run.produce_stream(after, rate, distinct=distinct, tag="post")
        waited = col.wait_for(second, 240)
        missing = col.missing(second)
        figures.add(
            events_before=before,
            events_after=after,
            lost_after_restart=len(missing),
            recovery_s=round(time.monotonic() - t0, 1),
            wait_after_produce_s=round(waited, 1),
            worker_pid_same=worker.alive(),
            delivery_failed_lines=len(worker.log_events("delivery_failed")),
        )
        assert worker.alive(), log_tail(worker.log)
        assert not missing, f"{len(missing)} post-restart events never came out\n{log_tail(worker.log, 30)}"
        assert run.workers == [worker]  # no manual restart
    figures.emit()
    return figures


def tmpdir(base: Path, name: str) -> Path:
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path
