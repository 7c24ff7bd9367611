"""Hot reload with events in flight, and the web endpoints scraped from a running worker."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from bertstream.devservices.worker_process import wait_ready
from pipelines.registry import resolve_head_dir
from tests.faults import scenarios
from tests.faults.harness import FaultRun, wait_until

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _republish(head_dir: Path, note: str) -> None:
    """A re-released head: same weights, new head.json, so a new content version."""
    config = json.loads((head_dir / "head.json").read_text())
    config.setdefault("training", {})["release_note"] = note
    (head_dir / "head.json").write_text(json.dumps(config, indent=2))


def test_reload_on_file_change_and_sighup_with_events_in_flight(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    heads = []
    for name in ("spam", "sentiment"):
        shutil.copytree(resolve_head_dir(name), tmp_path / name)
        heads.append(str(tmp_path / name))
    run = FaultRun(
        kafka_bootstrap,
        redis_url,
        tmp_path,
        heads=heads,
        prefix="reload",
        env={"BERTSTREAM_RELOAD_CHECK_S": "1", "BERTSTREAM_LAG_INTERVAL_S": "1"},
    )
    with scenarios.observed(run) as collector:
        worker = run.start_worker()
        assert _get(worker.port, "/healthz")[0] == 200
        status, body = _get(worker.port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        old_version = json.loads(body)["model"]

        ids: list[str] = []
        feeder = threading.Thread(target=lambda: ids.extend(run.produce_stream(400, rate=40.0)))
        feeder.start()
        assert wait_until(lambda: len(collector.outputs) >= 60, 120) is not None
        _republish(tmp_path / "spam", "file-change")  # picked up by the file watcher
        assert (
            wait_until(lambda: worker.metric("bertstream_model_reloads_total", '{result="ok"}') == 1.0, 120) is not None
        )
        mid_version = json.loads(_get(worker.port, "/readyz")[1])["model"]
        assert mid_version != old_version

        _republish(tmp_path / "sentiment", "sighup")
        run.kill(worker, signal.SIGHUP)
        assert (
            wait_until(lambda: (worker.metric("bertstream_model_reloads_total", '{result="ok"}') or 0) >= 2.0, 120)
            is not None
        )
        feeder.join(timeout=120)
        collector.wait_for(ids, timeout_s=180)

        assert collector.missing(ids) == []
        versions = [docs[0]["model"]["version"] for docs in (collector.outputs[i] for i in ids)]
        assert versions[0] != versions[-1]  # outputs from before and after the reloads
        assert len(set(versions)) >= 2
        # Once a version is replaced it never comes back (the old model served until the swap).
        last_index = {v: max(k for k, x in enumerate(versions) if x == v) for v in set(versions)}
        first_index = {v: versions.index(v) for v in set(versions)}
        order = sorted(set(versions), key=first_index.get)
        assert all(last_index[a] <= first_index[b] + 64 for a, b in zip(order, order[1:]))

        metrics = worker.metrics()
        assert "bertstream_consumer_lag{" in metrics
        assert f'pipeline="{run.pipeline}"' in metrics
        assert "bertstream_model_info{" in metrics
        assert worker.alive()


def test_sighup_during_the_first_model_load_is_harmless(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    """A SIGHUP before the reload handler exists (while the model loads) used to end the process."""
    run = FaultRun(kafka_bootstrap, redis_url, tmp_path, prefix="hup")
    try:
        worker = run.start_worker(wait=False)
        time.sleep(1.0)  # importing and loading take several seconds more
        assert worker.proc.poll() is None
        run.kill(worker, signal.SIGHUP)
        wait_ready(worker.proc, worker.port, worker.log, timeout_s=300)
        assert json.loads(_get(worker.port, "/readyz")[1])["ready"] is True
    finally:
        run.stop_all()
