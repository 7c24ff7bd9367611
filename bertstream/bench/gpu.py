"""`bertstream bench --gpu` (`make bench-gpu`): the GPU bench, one table, in under 8 minutes on one GPU.

- the GPU's practical matrix-multiply peak in fp16 and bf16 (bertstream/bench/flops.py);
- B: all-MiniLM-L6 and the heads, model only (`Classifier.predict`: tokenizing on the host, the
  encoder, the heads) in fp16 and bf16 at token budgets (padded tokens per forward pass) large
  enough to fill the GPU, with achieved FLOP/s against the peak; and the model pass alone on texts
  tokenized beforehand, at the largest budget (what tokenizing on the host costs);
- a BERT-base-sized encoder, random weights (no BERT-base weights can be had offline; throughput
  does not depend on weight values), fp16 and bf16, the same budgets;
- D (warm cache) and C (cold) end to end with 1, 2, 4 and 8 worker processes in one consumer group
  on the one GPU, under NVIDIA MPS when `nvidia-cuda-mps-control` is there; bursts are sent by
  several producer processes, so that the sender is not the limit. This section runs first, before
  this process opens a CUDA context of its own, and no new worker count starts after 270 s.

`--device cpu` runs every path at tiny sizes (as the tests do): a dry run, not a measurement.
Without a CUDA device, `--gpu` stops with a line saying so.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bertstream.bench import data as bench_data
from bertstream.bench.flops import encoder_flops, gemm_peak, utilization
from bertstream.bench.model import throughput

PRECISIONS = ["fp16", "bf16"]
TOKENS_PER_TEXT = 32  # padded tokens of a short bench text (~20 tokens, padded to the longest of its pass)
WEIGHTS_NOTE = "random weights: throughput does not depend on weight values"
GPU_TARGET = 20000  # model-only short events/s on one GPU (the H200 target of `make bench`)


class NoGpu(RuntimeError):
    pass


def check_device(device: str) -> str:
    """The device to run on; NoGpu with a clear line when a CUDA device is asked for and absent."""
    import torch

    if not device.startswith("cuda"):
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= count:
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
        found = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise NoGpu(
            f"no GPU: `bertstream bench --gpu` measures a CUDA device and this host has {found} ({build}); "
            "nothing was measured. `--device cpu` runs the same paths at tiny sizes (a dry run, as the tests do)."
        )
    return device


def gpu_sizes(device: str, quick: bool = False, events: int | None = None) -> dict[str, Any]:
    if device.startswith("cuda"):
        return {
            "budgets": [16384, 65536] if quick else [16384, 65536, 262144],
            "min_seconds": 1.0 if quick else 3.0,
            "peak_seconds": 0.5 if quick else 1.0,
            "peak_sizes": [4096, 8192],
            "events": events or (4000 if quick else 20000),
            "workers": [1, 2, 4, 8],
            "producers": 4,
            # No new worker count starts after this (each takes ~1 min); the model section then
            # takes ~1.5 min: the whole run stays under 8 minutes.
            "stream_budget_s": 270.0,
        }
    return {  # a dry run of the same paths
        "budgets": [128, 256],
        "min_seconds": 0.05,
        "peak_seconds": 0.02,
        "peak_sizes": [64],
        "events": events or 30,
        "workers": [1, 2],
        "producers": 2,
        "stream_budget_s": 600.0,
    }


def minilm_classifier(precision: str, heads: list[str], device: str) -> Any:
    from pipelines.classifier import Classifier
    from pipelines.encoder import Encoder, EncoderSettings
    from worker.config import load_settings

    settings = load_settings()
    encoder = Encoder(EncoderSettings(model_dir=settings.model_dir, device=device, precision=precision, instances=1))
    return Classifier.load(encoder, heads)


def set_budget(classifier: Any, budget: int, texts_per_call: int) -> None:
    """Padded tokens and windows per forward pass of an already loaded encoder."""
    encoder = classifier.encoder
    encoder.settings = dataclasses.replace(encoder.settings, token_budget=budget, max_batch=texts_per_call)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_pass_throughput(
    classifier: Any, texts: list[str], tasks: list[str], batch: int, min_seconds: float
) -> dict[str, Any]:
    """Texts/s of the encoder and heads alone (`Classifier.run`) on texts tokenized beforehand.

    On a thread of its own, as B and the worker run the model (on the CPU, torch in the main thread
    ran 20x slower than in another thread on the busy 2-core development machine)."""
    from concurrent.futures import ThreadPoolExecutor

    prepared = [classifier.prepare(texts[i : i + batch]) for i in range(0, len(texts) - batch + 1, batch)]

    def loop() -> tuple[int, float]:
        classifier.run(prepared[0], tasks)  # warm-up
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < min_seconds or done < 2 * batch:
            for item in prepared:
                classifier.run(item, tasks)
                done += len(item.texts)
        return done, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-model") as pool:
        done, elapsed = pool.submit(loop).result()
    return {"batch": batch, "texts": done, "seconds": round(elapsed, 4), "events_per_s": round(done / elapsed, 2)}


def _row(
    path: str, model: str, precision: str, budget: int, batch: int, fig: dict[str, Any], flops: dict, peaks: dict
) -> dict[str, Any]:
    peak = (peaks.get(precision) or {}).get("flops_per_s")
    return {
        "path": path,
        "model": model,
        "precision": precision,
        "token_budget": budget,
        "texts_per_call": batch,
        "events_per_s": fig["events_per_s"],
        "tokens_per_s": round(fig["events_per_s"] * flops["tokens_per_event"], 1),
        "flops_per_event": flops["flops_per_event"],
        **utilization(fig["events_per_s"], flops["flops_per_event"], peak),
    }


def run_gpu_model_suite(
    heads: list[str],
    tasks: list[str],
    device: str,
    sizes: dict[str, Any],
    log: Callable[[str], None],
    precisions: list[str] | None = None,
    base_sized: bool = True,
) -> dict[str, Any]:
    """The peaks, B per precision and token budget, the model pass alone, the BERT-base-sized encoder."""
    import torch

    from bertstream.bench.base import base_sized_classifier

    precisions = precisions or PRECISIONS
    budgets = sizes["budgets"]
    calls = {b: max(1, b // TOKENS_PER_TEXT) for b in budgets}  # texts per predict call
    texts = bench_data.short_texts(2 * max(calls.values()), f"gpu-{os.urandom(3).hex()}")
    out: dict[str, Any] = {"peak": {}, "rows": []}
    for precision in precisions:
        log(f"GPU bench: matrix-multiply peak, {precision}")
        out["peak"][precision] = gemm_peak(
            precision, device, sizes=tuple(sizes["peak_sizes"]), min_seconds=sizes["peak_seconds"]
        )
    builders: list[tuple[str, str, Callable[[str, int, int], Any]]] = [
        ("B", "all-MiniLM-L6", lambda p, b, n: minilm_classifier(p, heads, device))
    ]
    if base_sized:
        builders.append(
            (
                "BERT-base-sized",
                "BERT-base-sized (random weights)",
                lambda p, b, n: base_sized_classifier(p, heads, device, 1, token_budget=b, max_batch=n),
            )
        )
    out["errors"] = []
    for path, model, build in builders:
        for precision in precisions:
            log(f"GPU bench: {model}, {precision}, token budgets {budgets}")
            classifier = None
            try:
                classifier = build(precision, budgets[0], calls[budgets[0]])
                for budget in budgets:
                    set_budget(classifier, budget, calls[budget])
                    flops = encoder_flops(classifier, texts, calls[budget], max_chunks=1)
                    fig = throughput(
                        classifier, texts, tasks, calls[budget], sizes["min_seconds"], min_texts=2 * calls[budget]
                    )
                    _sync(device)
                    out["rows"].append(_row(path, model, precision, budget, calls[budget], fig, flops, out["peak"]))
                if path == "B":
                    biggest = budgets[-1]
                    fig = model_pass_throughput(classifier, texts, tasks, calls[biggest], sizes["min_seconds"])
                    _sync(device)
                    flops = encoder_flops(classifier, texts, calls[biggest], max_chunks=1)
                    out["rows"].append(
                        _row("model pass only", model, precision, biggest, calls[biggest], fig, flops, out["peak"])
                    )
            except Exception as exc:  # noqa: BLE001 - one failed row (e.g. out of memory) must not lose the rest
                out["errors"].append(f"{model}, {precision}: {type(exc).__name__}: {exc}"[:300])
                log(f"GPU bench: FAILED: {out['errors'][-1]}")
            del classifier
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return out


def run_gpu_stream_suite(
    kafka: Any,
    redis_url: str,
    heads: list[str],
    device: str,
    sizes: dict[str, Any],
    log: Callable[[str], None],
    deadline: float,
    timeout_s: float = 300,
) -> dict[str, Any]:
    """C (cold) and D (warm) with each number of worker processes in one consumer group on one device."""
    from bertstream.bench.mps import mps_daemon
    from bertstream.bench.stream import StreamBench

    workers = sizes["workers"]
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"rows": [], "skipped": [], "partitions": max(workers)}
    with mps_daemon(device, log) as mps:
        out["mps"] = {"used": mps["used"], "note": mps["note"]}
        for n in workers:
            if time.monotonic() > deadline:
                out["skipped"].append(f"{n} worker processes: skipped, the time budget is spent")
                log(out["skipped"][-1])
                continue
            threads = max(1, cores // (n + 1))  # the host's cores shared by the workers, the producers and the broker
            settings = {"device": device, "threads": str(threads), "model_instances": "1"}
            env = {**mps["env"], "RAYON_NUM_THREADS": str(threads)}  # the tokenizer's thread pool
            producers = min(n, sizes["producers"])
            with StreamBench(
                kafka,
                redis_url,
                heads,
                log,
                timeout_s,
                settings,
                workers=n,
                partitions=max(workers),
                producers=producers,
                extra_env=env,
            ) as bench:
                texts = bench_data.short_texts(sizes["events"], f"{bench.run_id}-c")
                log(f"GPU bench: C, {n} worker process(es), {len(texts)} events, {producers} producer(s)")
                cold = bench.burst(texts, "c")
                log(f"GPU bench: D, {n} worker process(es), the same texts again")
                warm = bench.burst(texts, "d")
                out["rows"].append(
                    {
                        "workers": n,
                        "threads_per_worker": threads,
                        "producers": producers,
                        "start_seconds": bench.start_seconds,
                        "C": cold,
                        "D": warm,
                        "dead_letters": bench.collector.dead_letters,
                        # How the group spread the input over the processes.
                        "events_in_per_worker": [m.get("bertstream_events_in_total") for m in bench.each_metrics()],
                    }
                )
    one = next((r for r in out["rows"] if r["workers"] == 1), None)
    for row in out["rows"]:
        row["C_over_one_worker"] = round(row["C"]["events_per_s"] / one["C"]["events_per_s"], 3) if one else None
    return out


def _meta(device: str) -> dict[str, Any]:
    import torch

    from bertstream.bench.main import _cpu_name

    meta: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        meta["gpu"] = props.name
        meta["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return meta


def run_gpu_bench(
    out: Path,
    device: str = "cuda",
    quick: bool = False,
    events: int | None = None,
    heads: list[str] | None = None,
    workers: list[int] | None = None,
    brokers: str | None = None,
    redis_url: str | None = None,
    base_sized: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every section runs even when another failed (a GPU's time is scarce); failures are in the table."""
    import json

    import click

    from bertstream.bench.main import DEFAULT_HEADS
    from bertstream.devservices.stack import services
    from pipelines.registry import task_name

    started = time.monotonic()
    echo = log or (lambda m: click.echo(f"[{time.monotonic() - started:6.1f}s] {m}", err=True))
    device = check_device(device)
    sizes = gpu_sizes(device, quick, events)
    if workers:
        sizes["workers"] = workers
    heads = heads or DEFAULT_HEADS
    tasks = [task_name(h) for h in heads]
    report: dict[str, Any] = {"meta": {"quick": quick, "sizes": sizes, "heads": heads}}
    # End to end first: this process has no CUDA context yet while the workers share the GPU under MPS.
    try:
        with ExitStack() as stack:
            kafka, redis, _ = services(stack, echo, brokers, redis_url)
            report["stream"] = run_gpu_stream_suite(
                kafka, redis, heads, device, sizes, echo, deadline=started + sizes["stream_budget_s"]
            )
    except Exception as exc:  # noqa: BLE001 - reported in the table; the model section still runs
        report["stream"] = {"error": f"{type(exc).__name__}: {exc}"}
        echo(f"GPU bench: the end-to-end section failed: {report['stream']['error']}")
    try:
        report["model"] = run_gpu_model_suite(heads, tasks, device, sizes, echo, base_sized=base_sized)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        report["model"] = {"error": f"{type(exc).__name__}: {exc}"}
        echo(f"GPU bench: the model section failed: {report['model']['error']}")
    report["meta"].update(_meta(device))
    report["meta"]["seconds"] = round(time.monotonic() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(format_gpu_table(report))
    click.echo(f"\nreport: {out}  ({report['meta']['seconds']:.0f} s)")
    return report


def _si(value: float | None, unit: str) -> str:
    from bertstream.bench.report import _si as si

    return si(value, unit)


def format_gpu_table(report: dict[str, Any]) -> str:
    meta = report.get("meta", {})
    lines = [
        f"bertstream bench --gpu — {meta.get('date', '')}, {meta.get('gpu', meta.get('device', '?'))}"
        + (f" ({meta['gpu_memory_gib']} GiB)" if meta.get("gpu_memory_gib") else "")
        + f", {meta.get('cpu', '')} x {meta.get('cores', '?')}, torch {meta.get('torch', '?')}, CUDA {meta.get('cuda')}",
    ]
    if not str(meta.get("device", "")).startswith("cuda"):
        lines.append(f"DRY RUN on {meta.get('device')}: tiny sizes, the paths only; these figures measure nothing")
    model = report.get("model") or {}
    peaks = model.get("peak") or {}
    if peaks:
        lines.append(
            "GEMM peak (square torch.mm): "
            + ", ".join(f"{p} {_si(v['flops_per_s'], 'FLOP/s')} (n={v['n']})" for p, v in peaks.items())
        )
    lines.append("")
    lines.append(f"{'path':<80} {'events/s':>11} {'tokens/s':>12} {'FLOP/s':>14} {'of peak':>8}")
    lines.append("-" * 129)
    if model.get("error"):
        lines.append(f"model rows: FAILED: {model['error']}")
    for error in model.get("errors", []):
        lines.append(f"FAILED: {error}")
    for row in model.get("rows", []):
        label = {"B": "B  " + row["model"], "model pass only": f"   {row['model']}, model pass only"}.get(
            row["path"], "   " + row["model"]
        )
        name = f"{label}, {row['precision']}, {row['token_budget']:,} tok/pass ({row['texts_per_call']:,} texts/call)"
        fraction = row.get("fraction_of_peak")
        lines.append(
            f"{name:<80} {row['events_per_s']:>11,.1f} {row['tokens_per_s']:>12,.0f} "
            f"{_si(row.get('achieved_flops_per_s'), 'FLOP/s'):>14} "
            + ("n/a" if fraction is None else f"{100 * fraction:7.1f}%")
        )
    stream = report.get("stream") or {}
    if stream.get("error"):
        lines.append(f"end to end: FAILED: {stream['error']}")
    for row in stream.get("rows", []):
        n = row["workers"]
        for key, what in (("D", "warm cache"), ("C", "cold cache")):
            fig = row[key]
            extra = (
                f"  ({row['C_over_one_worker']:.2f}x 1 worker)" if key == "C" and row.get("C_over_one_worker") else ""
            )
            name = f"{key}  {n} worker process(es), {what}, {fig['events']:,} events"
            lines.append(f"{name:<80} {fig['events_per_s']:>11,.1f}{extra}")
    for line in stream.get("skipped", []):
        lines.append(f"   {line}")
    lines.append("")
    b_rows = [r for r in model.get("rows", []) if r["path"] == "B"]
    if b_rows:
        best = max(b_rows, key=lambda r: r["events_per_s"])
        verdict = (
            ("PASS" if best["events_per_s"] >= GPU_TARGET else "MISS")
            if str(meta.get("device", "")).startswith("cuda")
            else "n/a (dry run)"
        )
        lines.append(
            f"target: B (model only) >= {GPU_TARGET:,} events/s on the GPU: best {best['events_per_s']:,.0f}/s "
            f"({best['precision']}, {best['token_budget']:,} tok/pass)  {verdict}"
        )
    if any(r["path"] == "BERT-base-sized" for r in model.get("rows", [])):
        lines.append(f"BERT-base-sized: BertModel 12 layers, hidden 768, 12 heads, {WEIGHTS_NOTE}.")
    if stream.get("mps"):
        lines.append(stream["mps"]["note"])
    if stream.get("rows"):
        lines.append(
            f"end to end: {stream.get('partitions')} input partitions, one consumer group; sent by several producer "
            "processes (produce_seconds in the JSON: when close to a burst's seconds, the sender set the pace)."
        )
    lines.append(
        "B = Classifier.predict (tokenizing on the host + encoder + heads); 'model pass only' = the same on texts "
        "tokenized beforehand. FLOPs counted with torch.utils.flop_counter.FlopCounterMode (padding included)."
    )
    return "\n".join(lines)
