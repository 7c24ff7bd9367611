"""`bertstream bench`: our path and the baselines side by side, in one run.

On the same events, model and heads:

- A  the naive loop a user writes first (bertstream/bench/baseline.py), on a subset;
- B  model only: `Classifier.predict` on in-memory texts at the default precision, with fp32,
     int8 and bf16 at batch 64, a batch-size sweep, short vs long texts (bertstream/bench/model.py);
- C  the real worker process end to end, cold cache, events produced up front;
- D  the same texts again (new ids), warm cache;
- the sustainable rate: the highest paced rate the worker holds with p99 <= 250 ms (a short
  search, bertstream/bench/sustain.py), latency at fractions of it, throughput vs number of
  events, long texts end to end, the worker's peak RSS (bertstream/bench/stream.py);
- FLOP utilization: B's achieved FLOP/s against the machine's measured matrix-multiply peak per
  precision (bertstream/bench/flops.py);
- the multilingual encoder, model only, on Chinese and English, when it is built
  (bertstream/bench/multilingual.py);
- answer retrieval: question encoding vs exact search over 1k/10k/100k entries
  (bertstream/bench/answers.py);
- accuracy parity of the fast numerics against fp32 on labelled test splits.

`--gpu` runs the GPU bench instead (bertstream/bench/gpu.py).

Everything printed is measured in the run. Writes a JSON report and a PNG beside it.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

DEFAULT_HEADS = ["news_topic", "sentiment"]  # the `news` pipeline: short news-like texts
EVAL_HEADS = ["sentiment", "spam"]  # heads with a labelled test split (VADER, SMS spam)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sizes(quick: bool, events: int | None) -> dict[str, Any]:
    if quick:
        n = events or 300
        return {
            "events": n,
            "baseline": min(n, 60),
            "long_model": 16,
            "long_e2e": 8,
            "scaling": sorted({max(20, n // 6), n}),
            "loads": [0.5],
            "load_seconds": 3.0,
            "search_steps": 3,
            "peak_seconds": 0.2,
            "min_seconds": 1.0,
            "eval_per_set": 100,
            "sweep": [1, 4, 16, 64, 256],
            "agreement": 100,
        }
    n = events or 2000
    return {
        "events": n,
        "baseline": min(n, 300),
        "long_model": 64,
        "long_e2e": 48,
        "scaling": sorted({max(50, n // 10), max(100, n // 3), n}),
        "loads": [0.25, 0.5, 0.75],
        "load_seconds": 10.0,
        "search_steps": 5,
        "peak_seconds": 0.5,
        "min_seconds": 3.0,
        "eval_per_set": 500,
        "sweep": [1, 2, 4, 8, 16, 32, 64, 128, 256],
        "agreement": 300,
    }


def _resolve_heads(heads: list[str]) -> list[str]:
    from pipelines.registry import resolve_head_dir

    for h in heads:
        resolve_head_dir(h)  # ModelNotFoundError with a clear line
    return heads


def _eval_heads(heads: list[str], wanted: list[str]) -> list[str]:
    """Heads with a labelled set: from the bench heads, else beside them, else the committed ones."""
    from pipelines.registry import ModelNotFoundError, resolve_head_dir, task_name

    have = {task_name(h): h for h in heads}
    out = []
    for task in wanted:
        if task in have:
            continue
        for candidate in [str(Path(h).parent / task) for h in heads if Path(h).is_dir()] + [task]:
            try:
                resolve_head_dir(candidate)
            except ModelNotFoundError:
                continue
            out.append(candidate)
            break
    return out


def run_bench(
    out: Path,
    events: int | None = None,
    quick: bool = False,
    heads: list[str] | None = None,
    brokers: str | None = None,
    redis_url: str | None = None,
    skip_baseline: bool = False,
    base_sized: bool = True,
    multilingual: bool = True,
    answers: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    from bertstream.bench import data as bench_data
    from bertstream.bench.model import run_model_suite
    from bertstream.bench.report import format_table, ratios, targets, write_report
    from bertstream.bench.stream import run_stream_suite
    from bertstream.devservices.stack import services
    from pipelines.numerics import resolve_device, resolve_precision
    from pipelines.registry import task_name
    from worker.config import load_settings

    started = time.perf_counter()
    echo = log or (lambda m: click.echo(f"[{time.perf_counter() - started:6.1f}s] {m}", err=True))
    sizes = _sizes(quick, events)
    heads = _resolve_heads(heads or DEFAULT_HEADS)
    tasks = [task_name(h) for h in heads]
    settings = load_settings()
    device = resolve_device(settings.device)
    default_precision = resolve_precision(settings.precision, device)
    precisions = ["fp32", "int8", "bf16"] if device.type == "cpu" else ["fp32", "fp16", "bf16"]
    run = os.urandom(3).hex()
    short = bench_data.short_texts(sizes["events"], f"{run}-s")
    long = bench_data.long_texts(sizes["long_model"], f"{run}-l")
    extra_heads = _eval_heads(heads, EVAL_HEADS)
    evals, eval_note = bench_data.eval_sets(tasks + [task_name(h) for h in extra_heads], sizes["eval_per_set"])

    report: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "device": str(device),
            "precision": default_precision,
            "tasks": tasks,
            "heads": heads,
            "quick": quick,
            "sizes": sizes,
            "threads_setting": settings.threads,
            "batch_size": settings.batch_size,
            "batch_window_s": settings.batch_window_s,
            "load_avg_at_start": list(os.getloadavg()),
            "run_id": run,
        }
    }
    with ExitStack() as stack:
        kafka, redis_url, embedded = services(stack, echo, brokers, redis_url)
        report["meta"]["embedded"] = embedded
        if not skip_baseline:
            from bertstream.bench.baseline import run_baseline

            echo(f"A: naive loop on {sizes['baseline']} events")
            report["A"] = run_baseline(
                kafka,
                heads,
                bench_data.events(short[: sizes["baseline"]], f"{run}-a"),
                settings.model_dir,
                device=str(device),
            )
        model = run_model_suite(
            heads + extra_heads,
            tasks,
            short,
            long,
            settings.batch_size,
            default_precision,
            precisions,
            sizes["sweep"],
            sizes["min_seconds"],
            evals,
            short[: sizes["agreement"]] + long[:8],
            echo,
        )
        report["B"] = model.pop("B")
        report["batch_sweep"] = model.pop("batch_sweep")
        report["accuracy"] = model.pop("accuracy")
        if not evals:
            report["accuracy"]["note"] = (
                "no labelled eval set for these heads"
                + (f" ({eval_note})" if eval_note else "")
                + ": label agreement vs fp32 on the bench texts only"
            )
        report["length_scaling"] = {"model_only": model.pop("length")}
        report["meta"].update({k: v for k, v in model.pop("info").items() if k not in ("device", "precision")})
        import torch

        report["meta"]["torch_threads_model_only"] = torch.get_num_threads()
        report["model_only"] = model
        from bertstream.bench.flops import gemm_peak

        peak_precisions = [p for p in precisions if p != "int8"]
        plan = {"instances": report["meta"]["model_instances"], "threads": torch.get_num_threads()}
        echo(
            f"matrix-multiply peak, {' and '.join(peak_precisions)}, as B runs ({plan['instances']} x {plan['threads']})"
        )
        peaks = [{p: gemm_peak(p, str(device), **plan, min_seconds=sizes["peak_seconds"]) for p in peak_precisions}]
        if multilingual:
            from bertstream.bench.multilingual import run_multilingual_suite

            report["multilingual"] = run_multilingual_suite(
                heads,
                tasks,
                {"en": short[:512], "zh": bench_data.chinese_texts(512, f"{run}-zh")},
                str(device),
                ["bf16", "fp32"] if device.type == "cpu" else ["fp16", "bf16"],
                64,
                sizes["min_seconds"],
                echo,
                instances=report["meta"]["model_instances"],
                minilm_tokens_per_s=_minilm_tokens_per_s(report),
            )
        if base_sized:
            from bertstream.bench.base import run_base_suite

            base_precisions = list(
                dict.fromkeys(["fp32", default_precision] + ([] if device.type == "cpu" else ["fp16", "bf16"]))
            )
            report["base_sized"] = run_base_suite(
                heads,
                tasks,
                short,
                str(device),
                base_precisions,
                settings.batch_size,
                sizes["min_seconds"],
                echo,
                instances=settings.model_instances,
            )
        if answers:
            from bertstream.bench.answers import run_answers_bench

            report["answers"] = run_answers_bench(str(device), default_precision, sizes["min_seconds"], log=echo)
        stream = run_stream_suite(
            kafka,
            redis_url,
            heads,
            bench_data.short_texts,
            bench_data.long_texts,
            sizes["events"],
            sizes["long_e2e"],
            sizes["scaling"],
            sizes["loads"],
            sizes["load_seconds"],
            log=echo,
            search_steps=sizes["search_steps"],
        )
        # B again, after the stream: how much the machine's load drifted between B and C.
        from bertstream.bench.model import load_classifier, throughput

        echo("model only: B again (drift check)")
        again = load_classifier(default_precision, heads)
        report["B_again"] = {
            **throughput(
                again, short, tasks, settings.batch_size, sizes["min_seconds"], min_texts=2 * settings.batch_size
            ),
            "precision": default_precision,
        }
        del again
        echo("matrix-multiply peak again (the larger of the two is kept)")
        peaks.append({p: gemm_peak(p, str(device), **plan, min_seconds=sizes["peak_seconds"]) for p in peak_precisions})
    report["utilization"] = _utilization(report, peaks)
    report["C"], report["D"] = stream.pop("C"), stream.pop("D")
    if "long" in stream:
        report["long_end_to_end"] = stream.pop("long")
        report["length_scaling"]["end_to_end"] = {"short": report["C"], "long": report["long_end_to_end"]}
    report.update(stream)
    report["ratios"] = ratios(report)
    report["targets"] = targets(report)
    report["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    report["meta"]["load_avg_at_end"] = list(os.getloadavg())
    png = write_report(report, out)
    click.echo(format_table(report))
    if "answers" in report:
        from bertstream.bench.answers import format_table as answers_table

        click.echo("\n" + answers_table(report["answers"]))
    click.echo(
        f"\nreport: {out}  plot: {png}  ({report['meta']['seconds']:.0f} s; load average "
        f"{report['meta']['load_avg_at_start'][0]:.1f} at start — figures are noisy on a shared machine)"
    )
    return report


def _minilm_tokens_per_s(report: dict[str, Any]) -> dict[str, float]:
    """MiniLM's tokens/s per precision at batch 64 on the short English texts."""
    tokens = (report["model_only"].get("tokens") or {}).get("short_mean") or 0
    return {
        p: round(entry["batch64"]["events_per_s"] * tokens, 1)
        for p, entry in report["model_only"].get("precisions", {}).items()
        if tokens
    }


def _utilization(report: dict[str, Any], peaks: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """B and the batch-64 rows (and the multilingual rows) against the larger of the two peak measurements."""
    from bertstream.bench.flops import COUNT_METHOD, utilization, utilization_rows

    best = {p: max((run[p] for run in peaks), key=lambda r: r["flops_per_s"]) for p in peaks[0]}
    b = report["B"]
    figures = [("B", b["precision"], b["batch"], b["events_per_s"])]
    for precision, entry in report["model_only"].get("precisions", {}).items():
        if precision in best and not (precision == b["precision"] and b["batch"] == 64):
            figures.append((f"model only, {precision}", precision, 64, entry["batch64"]["events_per_s"]))
    rows = utilization_rows("minilm", figures, report["model_only"].get("flops") or {}, best)
    for row in (report.get("multilingual") or {}).get("rows", []):
        peak = (best.get(row["precision"]) or {}).get("flops_per_s")
        rows.append(
            {
                "model": "multilingual",
                "path": f"multilingual, {row['language']}, {row['precision']}",
                "precision": row["precision"],
                "batch": row["batch"],
                "events_per_s": row["events_per_s"],
                "flops_per_event": row["flops_per_event"],
                **utilization(row["events_per_s"], row["flops_per_event"], peak),
            }
        )
    return {
        "count_method": COUNT_METHOD,
        "peak_method": "square torch.mm in the precision's dtype, the same instances x threads as B, best size; "
        "measured after the model-only rows and again after C, the larger kept",
        "peak": best,
        "peak_runs": peaks,
        "rows": rows,
    }


@click.command("bench")
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=Path("reports/bench.json"),
    show_default=True,
    help="JSON report; a PNG plot is written beside it.",
)
@click.option(
    "--events",
    type=click.IntRange(min=10),
    default=None,
    help="Short events for C and D (and model-only); default 2000, or 300 with --quick.",
)
@click.option("--quick", is_flag=True, help="Small sizes and short timings: a smoke run, not a measurement.")
@click.option(
    "--heads",
    default=",".join(DEFAULT_HEADS),
    show_default=True,
    help="Comma-separated heads (committed names or head directories) for A, B, C and D.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=None,
    help="torch intra-op threads for every path (A, B and the worker); sets BERTSTREAM_THREADS. "
    "Default: BERTSTREAM_THREADS, else torch's default (one per core).",
)
@click.option("--skip-baseline", is_flag=True, help="Skip A (the naive loop).")
@click.option(
    "--base-sized/--no-base-sized",
    default=True,
    show_default=True,
    help="Also measure a BERT-base-sized encoder (random weights), model only, per precision.",
)
@click.option(
    "--multilingual/--no-multilingual",
    default=True,
    show_default=True,
    help="Also measure the multilingual encoder, model only, on Chinese and English (when it is built).",
)
@click.option(
    "--answers/--no-answers",
    default=True,
    show_default=True,
    help="Also measure answer retrieval: question encoding vs exact search over 1k/10k/100k entries.",
)
@click.option(
    "--gpu",
    is_flag=True,
    help="The GPU bench instead (make bench-gpu): B in fp16/bf16 at large token budgets, a BERT-base-sized "
    "encoder, D, and C with 1/2/4/8 worker processes on one GPU; one table, JSON beside --out "
    "(default reports/bench-gpu.json). Needs a CUDA device.",
)
@click.option(
    "--device",
    default="cuda",
    show_default=True,
    help="With --gpu: the device; `cpu` runs the same paths at tiny sizes (a dry run, not a measurement).",
)
@click.option(
    "--workers",
    default=None,
    help="With --gpu: worker process counts for C and D, comma-separated (default 1,2,4,8).",
)
def bench(
    out: Path,
    events: int | None,
    quick: bool,
    heads: str,
    threads: int | None,
    skip_baseline: bool,
    base_sized: bool,
    multilingual: bool,
    answers: bool,
    gpu: bool,
    device: str,
    workers: str | None,
) -> None:
    """Throughput and latency of our path against the baselines, in one run.

    Uses BERTSTREAM_KAFKA_BROKERS / BERTSTREAM_REDIS_URL when set, otherwise starts an embedded
    broker and Redis. Prints a table with the throughput and latency targets, writes a JSON report and a PNG.
    """
    from pipelines.registry import ModelNotFoundError

    if threads is not None:
        os.environ["BERTSTREAM_THREADS"] = str(threads)  # read by load_settings here and by the worker child
    head_list = [h.strip() for h in heads.split(",") if h.strip()]
    try:
        if gpu:
            from bertstream.bench.gpu import NoGpu, run_gpu_bench

            try:
                run_gpu_bench(
                    out if out != Path("reports/bench.json") else Path("reports/bench-gpu.json"),
                    device=device,
                    quick=quick,
                    events=events,
                    heads=head_list,
                    workers=[int(w) for w in workers.split(",")] if workers else None,
                    base_sized=base_sized,
                )
            except NoGpu as exc:
                raise click.ClickException(str(exc)) from None
            return
        run_bench(
            out,
            events,
            quick,
            head_list,
            skip_baseline=skip_baseline,
            base_sized=base_sized,
            multilingual=multilingual,
            answers=answers,
        )
    except ModelNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
