"""Model-only figures (B): `Classifier.predict` on in-memory texts, per precision and batch size."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bertstream.bench.data import EvalSet


def load_classifier(precision: str, heads: list[str]) -> Any:
    """The worker's own loading path (worker.model.build_model) at a given precision."""
    from worker.config import load_settings
    from worker.model import build_model

    return build_model(load_settings(precision=precision), heads)


def throughput(
    classifier: Any,
    texts: list[str],
    tasks: list[str],
    batch: int,
    min_seconds: float,
    min_texts: int = 0,
    instances: int | None = None,
) -> dict[str, Any]:
    """Texts/s of predict() in chunks of `batch`, over whole passes of `texts` (cycled) until both
    `min_seconds` have passed and `min_texts` (at least one chunk) were classified. One chunk of
    warm-up first.

    As in the worker, `instances` (default: the encoder's) chunks run at once, one thread each."""
    instances = max(1, instances or getattr(classifier.encoder, "instances", 1))
    # At least one chunk: on a busy machine the threads can start after min_seconds has passed.
    min_texts = max(min_texts, batch)
    classifier.predict(texts[:batch], tasks)
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "calls": 0}
    cpu_started = time.process_time()  # this process, all threads: the model's CPU
    started = time.perf_counter()

    def loop() -> None:
        while True:
            with lock:
                if time.perf_counter() - started >= min_seconds and state["done"] >= min_texts:
                    return
                i = state["next"]
                state["next"] = (i + batch) % len(texts)
                state["done"] += batch  # claimed now, so that the other threads stop in time
            chunk = texts[i : i + batch]
            if len(chunk) < batch:  # wrap around: always full chunks
                chunk = chunk + texts[: batch - len(chunk)]
            classifier.predict(chunk, tasks)
            with lock:
                state["calls"] += 1

    with ThreadPoolExecutor(max_workers=instances, thread_name_prefix="bench-model") as pool:
        for future in [pool.submit(loop) for _ in range(instances)]:
            future.result()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    done = state["done"]
    return {
        "batch": batch,
        "texts": done,
        "calls": state["calls"],
        "instances": instances,
        "seconds": round(elapsed, 4),
        "events_per_s": round(done / elapsed, 2),
        "cpu_seconds_per_event": round(cpu / done, 6) if done else None,
    }


def _one_instance_all_threads(
    classifier: Any,
    texts: list[str],
    tasks: list[str],
    batch: int,
    segment: float,
    rounds: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """B with the plan the default replaced: one batch at a time across every core's torch thread."""
    import torch

    from pipelines.numerics import cpu_cores

    threads, cores = torch.get_num_threads(), cpu_cores()
    log(f"model only: the other plan, 1 instance x {cores} threads")
    torch.set_num_threads(cores)
    try:
        fig = _median(
            [
                throughput(classifier, texts, tasks, batch, segment, min_texts=2 * batch, instances=1)
                for _ in range(rounds)
            ]
        )
    finally:
        torch.set_num_threads(threads)
    return {**fig, "threads": cores}


def label_agreement(a: list[Any], b: list[Any], tasks: list[str]) -> dict[str, float]:
    return {
        task: round(
            100.0 * sum(x.results[task]["label"] == y.results[task]["label"] for x, y in zip(a, b)) / max(1, len(a)), 3
        )
        for task in tasks
    }


def predict_all(classifier: Any, texts: list[str], tasks: list[str], batch: int = 64) -> list[Any]:
    out: list[Any] = []
    for start in range(0, len(texts), batch):
        out += classifier.predict(texts[start : start + batch], tasks)
    return out


def _median(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The median sample by events/s, with every sample's rate (contention on a shared host is bursty)."""
    ordered = sorted(samples, key=lambda r: r["events_per_s"])
    mid = dict(ordered[len(ordered) // 2])
    mid["samples_events_per_s"] = [r["events_per_s"] for r in samples]
    return mid


def run_model_suite(
    heads: list[str],
    tasks: list[str],
    short: list[str],
    long: list[str],
    batch: int,
    default_precision: str,
    precisions: list[str],
    sweep: list[int],
    min_seconds: float,
    evals: list[EvalSet],
    agreement_texts: list[str],
    log: Callable[[str], None],
    rounds: int = 3,
) -> dict[str, Any]:
    """B at the default precision, every precision at batch 64, the batch sweep, short vs long,
    and accuracy parity of each precision against fp32.

    All precisions are loaded first and measured interleaved, in `rounds` rounds, the median kept:
    a burst of load from other processes then hits every precision alike, not just one.
    """
    eval_tasks = sorted({e.task for e in evals})
    all_tasks = list(dict.fromkeys(tasks + eval_tasks))
    order = [default_precision] + [p for p in precisions if p != default_precision]
    results: dict[str, Any] = {"precisions": {}, "batch_sweep": [], "length": {}, "accuracy": {}}
    classifiers: dict[str, Any] = {}
    for precision in order:
        log(f"model only: loading the classifier at {precision}")
        classifier = load_classifier(precision, heads)
        missing = [t for t in all_tasks if t not in classifier.heads]
        if missing:
            raise RuntimeError(f"heads {missing} not loaded")
        classifiers[classifier.encoder.precision] = classifier
    default = classifiers[order[0]] if order[0] in classifiers else next(iter(classifiers.values()))
    info = {
        "device": str(default.encoder.device),
        "precision": default.encoder.precision,
        "model": default.encoder.name,
        "model_version": default.version(tasks),
        "model_instances": default.encoder.instances,
    }
    from bertstream.bench.data import mean_tokens

    results["tokens"] = {
        "short_mean": round(mean_tokens(default.encoder.tokenizer, short), 1),
        "long_mean": round(mean_tokens(default.encoder.tokenizer, long), 1),
    }
    segment = min_seconds / rounds
    samples: dict[str, list[dict[str, Any]]] = {p: [] for p in classifiers}
    b_samples: list[dict[str, Any]] = []
    for r in range(rounds):
        log(f"model only: batch 64, every precision, round {r + 1}/{rounds}")
        for precision, classifier in classifiers.items():
            samples[precision].append(throughput(classifier, short, tasks, 64, segment, min_texts=128))
            if classifier is default and batch != 64:
                b_samples.append(throughput(classifier, short, tasks, batch, segment, min_texts=2 * batch))
    for precision in classifiers:
        results["precisions"][precision] = {"precision": precision, "batch64": _median(samples[precision])}
    b = _median(b_samples) if b_samples else results["precisions"][info["precision"]]["batch64"]
    results["B"] = {**b, "precision": info["precision"]}
    for size in sweep:
        log(f"model only: batch sweep, batch {size}")
        results["batch_sweep"].append(
            _median([throughput(default, short, tasks, size, segment, min_texts=2 * size) for _ in range(rounds)])
        )
    if default.encoder.device.type == "cpu" and default.encoder.instances > 1:
        results["other_plan"] = _one_instance_all_threads(default, short, tasks, batch, segment, rounds, log)
    log("model only: FLOPs per event (FlopCounterMode)")
    from bertstream.bench.flops import encoder_flops

    # The count depends on shapes only; int8's quantized linear layers are not counted, so never on int8.
    counter = next((c for p, c in classifiers.items() if p != "int8"), None)
    if counter is not None:
        results["flops"] = {str(size): encoder_flops(counter, short, size) for size in dict.fromkeys([64, batch])}
    log("model only: long texts")
    long_fig = throughput(default, long, tasks, batch, min_seconds, min_texts=min(len(long), 2 * batch))
    results["length"] = {
        "short": {**results["B"], "mean_tokens": results["tokens"]["short_mean"]},
        "long": {**long_fig, "mean_tokens": results["tokens"]["long_mean"]},
    }
    predictions: dict[str, dict[str, list[Any]]] = {}
    for precision, classifier in classifiers.items():
        log(f"model only: {precision}, parity predictions")
        predictions[precision] = {"agreement": predict_all(classifier, agreement_texts, all_tasks)}
        for e in evals:
            predictions[precision][e.dataset] = predict_all(classifier, e.texts, [e.task])
    classifiers.clear()
    gc.collect()
    results["info"] = info
    results["accuracy"] = _parity(predictions, evals, all_tasks, len(agreement_texts))
    return results


def _parity(
    predictions: dict[str, dict[str, list[Any]]], evals: list[EvalSet], tasks: list[str], n_agreement: int
) -> dict[str, Any]:
    if "fp32" not in predictions:
        return {"note": "fp32 was not run: no parity"}
    ref = predictions["fp32"]
    out: dict[str, Any] = {
        "sets": [{"task": e.task, "dataset": e.dataset, "texts": len(e.texts)} for e in evals],
        "agreement_texts": n_agreement,
        "per_precision": {},
    }
    for precision, preds in predictions.items():
        row: dict[str, Any] = {
            "agreement_vs_fp32_bench_texts": label_agreement(preds["agreement"], ref["agreement"], tasks)
        }
        for e in evals:
            got = preds[e.dataset]
            acc = 100.0 * sum(p.results[e.task]["label"] == y for p, y in zip(got, e.labels)) / len(e.labels)
            ref_acc = (
                100.0 * sum(p.results[e.task]["label"] == y for p, y in zip(ref[e.dataset], e.labels)) / len(e.labels)
            )
            row[e.dataset] = {
                "task": e.task,
                "accuracy": round(acc, 3),
                "fp32_accuracy": round(ref_acc, 3),
                "delta_points": round(acc - ref_acc, 3),
                "agreement_vs_fp32": label_agreement(got, ref[e.dataset], [e.task])[e.task],
            }
        out["per_precision"][precision] = row
    return out
