"""The bench report: the throughput and latency targets against measured figures, the table, the JSON and the PNG."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _get(report: dict[str, Any], *path: str) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    def div(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None

    c = _get(report, "C", "events_per_s")
    return {
        "C_over_A": div(c, _get(report, "A", "events_per_s")),
        "C_over_B": div(c, _get(report, "B", "events_per_s")),
        "B_over_fp32_batch64": div(
            _get(report, "B", "events_per_s"),
            _get(report, "model_only", "precisions", "fp32", "batch64", "events_per_s"),
        ),
        "D_over_C": div(_get(report, "D", "events_per_s"), c),
        # The streaming overhead in CPU, which holds on any machine: worker CPU per event in C
        # (from /proc) over the model's CPU per event in B (process time, all threads).
        "C_cpu_over_B_cpu": div(
            _get(report, "C", "worker", "cpu_seconds_per_event"), _get(report, "B", "cpu_seconds_per_event")
        ),
        "B_again_over_B": div(_get(report, "B_again", "events_per_s"), _get(report, "B", "events_per_s")),
        "B_over_one_instance": div(
            _get(report, "B", "events_per_s"), _get(report, "model_only", "other_plan", "events_per_s")
        ),
        "sustainable_over_peak": div(_get(report, "sustainable", "events_per_s"), c),
    }


def _fraction(point: dict[str, Any]) -> float:
    """A latency point's load as a fraction of its base rate (reports before the sustainable rate: of the peak)."""
    return point.get("fraction", point.get("fraction_of_peak", 0.0))


def half_peak_latency(report: dict[str, Any]) -> dict[str, Any] | None:
    """The latency point nearest half of its base rate (the sustainable rate, else the burst peak)."""
    points = report.get("latency") or []
    if not points:
        return None
    return min(points, key=lambda p: abs(_fraction(p) - 0.5))


def bf16_utilization(report: dict[str, Any]) -> dict[str, Any] | None:
    """MiniLM's bf16 batch-64 utilization row (B itself when B is bf16 at batch 64)."""
    rows = _get(report, "utilization", "rows") or []
    return next((r for r in rows if r["model"] == "minilm" and r["precision"] == "bf16" and r["batch"] == 64), None)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    r = report.get("ratios", {})
    rows: list[dict[str, Any]] = []

    def add(name: str, target: str, measured: Any, ok: bool | None, unit: str = "") -> None:
        shown = (
            "n/a"
            if measured is None
            else (f"{measured:,.2f}{unit}" if isinstance(measured, float) else f"{measured}{unit}")
        )
        rows.append(
            {
                "target": name,
                "want": target,
                "measured": measured,
                "shown": shown,
                "status": "n/a" if ok is None else ("PASS" if ok else "MISS"),
            }
        )

    def cmp(value: Any, check: Callable[[float], bool]) -> bool | None:
        return None if value is None else bool(check(value))

    add("C/A (worker vs naive loop)", ">= 10x", r.get("C_over_A"), cmp(r.get("C_over_A"), lambda v: v >= 10), "x")
    add("C/B (streaming overhead)", ">= 0.8", r.get("C_over_B"), cmp(r.get("C_over_B"), lambda v: v >= 0.8))
    cpu = r.get("C_cpu_over_B_cpu")
    add("CPU-seconds per event, C over B", "<= 1.2", cpu, cmp(cpu, lambda v: v <= 1.2))
    add(
        "B / fp32 batch 64",
        ">= 2.5x",
        r.get("B_over_fp32_batch64"),
        cmp(r.get("B_over_fp32_batch64"), lambda v: v >= 2.5),
        "x",
    )
    d = _get(report, "D", "events_per_s")
    add("D warm cache events/s", ">= 2,000", d, cmp(d, lambda v: v >= 2000))
    half = half_peak_latency(report)
    p99 = half["p99_ms"] if half else None
    label = (
        f"p99 latency at {_fraction(half):.0%} of {half.get('of', 'peak')}" if half else "p99 latency at 50% of peak"
    )
    add(label, "<= 250 ms", p99, cmp(p99, lambda v: v <= 250), " ms")
    sustained = r.get("sustainable_over_peak")
    if report.get("sustainable") is not None:
        add(
            "sustainable rate (p99 <= 250 ms) / burst peak",
            ">= 0.7",
            sustained if sustained is not None else 0.0,
            cmp(sustained if sustained is not None else 0.0, lambda v: v >= 0.7),
        )
    util = bf16_utilization(report)
    if report.get("utilization") is not None:
        fraction = util["fraction_of_peak"] if util else None
        add(
            "B bf16 FLOP utilization (of the GEMM peak)",
            ">= 50%",
            None if fraction is None else round(100 * fraction, 1),
            cmp(fraction, lambda v: v >= 0.5),
            " %",
        )
    per = _get(report, "accuracy", "per_precision") or {}
    for precision, row in per.items():
        if precision == "fp32":
            continue
        deltas = [v["delta_points"] for v in row.values() if isinstance(v, dict) and "delta_points" in v]
        if deltas:
            worst = min(deltas)
            add(f"{precision} accuracy vs fp32 (worst set)", ">= -0.5 points", float(worst), worst >= -0.5, " pt")
        else:
            agree = row.get("agreement_vs_fp32_bench_texts", {})
            worst = min(agree.values()) if agree else None
            add(
                f"{precision} label agreement vs fp32 (no labelled set)",
                "(accuracy target needs a labelled set)",
                worst,
                None,
                " %",
            )
    device = _get(report, "meta", "device") or "cpu"
    b = _get(report, "B", "events_per_s")
    add(
        "GPU model-only events/s (H200)",
        ">= 20,000",
        b if device.startswith("cuda") else None,
        cmp(b, lambda v: v >= 20000) if device.startswith("cuda") else None,
    )
    return rows


def format_table(report: dict[str, Any]) -> str:
    lines = []
    meta = report.get("meta", {})
    lines.append(
        f"bertstream bench — {meta.get('date', '')}, {meta.get('cpu', '')}, {meta.get('cores', '?')} cores, "
        f"device {meta.get('device', '?')}, default precision {meta.get('precision', '?')}"
    )
    lines.append(
        f"model {meta.get('model', '?')}, heads {', '.join(meta.get('tasks', []))}, "
        f"short texts ~{_get(report, 'model_only', 'tokens', 'short_mean')} tokens, "
        f"long ~{_get(report, 'model_only', 'tokens', 'long_mean')} tokens"
    )
    lines.append(
        f"engine: {meta.get('model_instances', '?')} model instance(s) x {meta.get('torch_threads_model_only', '?')} "
        "torch thread(s), for B and the worker alike"
    )
    lines.append("")
    lines.append(f"{'path':<58} {'events':>7} {'events/s':>10}")
    lines.append("-" * 77)

    def row(name: str, fig: dict[str, Any] | None, extra: str = "") -> None:
        if fig:
            lines.append(
                f"{name:<58} {fig.get('events', fig.get('texts', 0)):>7} {fig['events_per_s']:>10,.1f}  {extra}"
            )

    row("A  naive: kafka-python loop + HF pipeline per message", report.get("A"))
    b = report.get("B")
    if b:
        row(f"B  model only, {b.get('precision')} batch {b.get('batch')}", b)
    for precision, entry in (_get(report, "model_only", "precisions") or {}).items():
        if b and precision == b.get("precision") and b.get("batch") == 64:
            continue  # that is B
        row(f"   model only, {precision} batch 64", entry.get("batch64"))
    other = _get(report, "model_only", "other_plan")
    if other:
        row(
            f"   model only, {b.get('precision') if b else ''} batch {other.get('batch')}, 1 instance x {other.get('threads')} threads",
            other,
        )
    row("   B again, after the end-to-end runs (drift check)", report.get("B_again"))
    for precision, entry in (_get(report, "base_sized", "precisions") or {}).items():
        row(f"   BERT-base-sized (random weights), model only, {precision}", entry)
    c, d = report.get("C"), report.get("D")
    row("C  worker end to end, cold cache", c, f"mean batch {_get(c or {}, 'worker', 'mean_batch')}")
    row("D  worker end to end, warm cache", d, f"cached {d.get('cached') if d else ''}")
    row("   worker end to end, long emails, cold", report.get("long_end_to_end"))
    lines.append("")
    r = report.get("ratios", {})
    lines.append("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if v is not None))
    b_cpu, c_cpu = _get(report, "B", "cpu_seconds_per_event"), _get(report, "C", "worker", "cpu_seconds_per_event")
    if b_cpu and c_cpu:
        lines.append(
            f"CPU per event: B {1000 * b_cpu:.2f} ms (the model's process), C {1000 * c_cpu:.2f} ms "
            f"(the worker process, from /proc), C/B {c_cpu / b_cpu:.2f}"
        )
    if _get(report, "C", "cores"):
        lines.append(f"cores busy during C: {cores_text(report['C']['cores'])}")
    drift = r.get("B_again_over_B")
    if drift is not None and not 0.8 <= drift <= 1.25:
        lines.append(
            f"WARNING: model-only throughput changed {drift:.2f}x between B and its repeat after C: the machine's "
            "load changed during the run, so ratios across phases are unreliable (rerun on a quiet machine, "
            "or pin --threads)"
        )
    lines += sustainable_lines(report)
    if report.get("latency"):
        lines.append("latency (paced producer; output arrival - send, by id):")
        for p in report["latency"]:
            lines.append(
                f"   offered {p['offered_events_per_s']:>8,.1f}/s ({_fraction(p):.0%} of {p.get('of', 'C')})  achieved "
                f"{p['achieved_events_per_s']:>8,.1f}/s  p50 {p['p50_ms']:>7.1f}  p95 {p['p95_ms']:>7.1f}  "
                f"p99 {p['p99_ms']:>7.1f} ms"
                + (f"  (worker-side p99 {p['worker_side']['p99_ms']:.1f})" if p.get("worker_side") else "")
            )
    if report.get("batch_sweep"):
        lines.append(
            "model only by batch size: "
            + ", ".join(f"{s['batch']}: {s['events_per_s']:,.0f}/s" for s in report["batch_sweep"])
        )
    ls = report.get("length_scaling", {})
    if ls.get("model_only"):
        mo = ls["model_only"]
        lines.append(
            f"by text length, model only: short {mo['short']['events_per_s']:,.1f}/s (~{mo['short']['mean_tokens']} tok), "
            f"long {mo['long']['events_per_s']:,.1f}/s (~{mo['long']['mean_tokens']} tok)"
        )
    if report.get("events_scaling"):
        lines.append(
            "by number of events, end to end cold: "
            + ", ".join(f"{s['events']}: {s['events_per_s']:,.0f}/s" for s in report["events_scaling"])
        )
    lines.append(f"worker peak RSS (VmHWM): {report.get('worker_peak_rss_mb')} MiB")
    lines += utilization_lines(report.get("utilization"))
    lines += multilingual_lines(report.get("multilingual"))
    acc = report.get("accuracy", {})
    if acc.get("per_precision"):
        lines.append(
            "accuracy parity ("
            + (
                ", ".join(f"{s['dataset']} {s['texts']} texts" for s in acc.get("sets", []))
                or f"no labelled set: {acc.get('note', '')}"
            )
            + "):"
        )
        for precision, prow in acc["per_precision"].items():
            parts = [
                f"{v.get('dataset', k)}: acc {v['accuracy']:.2f} (Δ {v['delta_points']:+.2f}, agree {v['agreement_vs_fp32']:.1f}%)"
                for k, v in prow.items()
                if isinstance(v, dict) and "accuracy" in v
            ]
            agree = prow.get("agreement_vs_fp32_bench_texts", {})
            parts.append("bench texts agree " + ", ".join(f"{t} {a:.1f}%" for t, a in agree.items()))
            lines.append(f"   {precision:<5} " + "; ".join(parts))
    lines.append("")
    lines.append(f"{'target':<46} {'want':<16} {'measured':>14}  status")
    lines.append("-" * 86)
    for t in report.get("targets", []):
        lines.append(f"{t['target']:<46} {t['want']:<16} {t['shown']:>14}  {t['status']}")
    return "\n".join(lines)


def _si(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:,.2f} {prefix}{unit}"
    return f"{value:,.0f} {unit}"


def utilization_lines(util: dict[str, Any] | None) -> list[str]:
    """The GEMM peak per precision and each row's achieved FLOP/s against it."""
    if not util:
        return []
    lines = [f"FLOP utilization (FLOPs: {util.get('count_method', '?')}; peak: {util.get('peak_method', '?')}):"]
    peaks = util.get("peak") or {}
    lines.append(
        "   GEMM peak: "
        + ", ".join(
            f"{p} {_si(v['flops_per_s'], 'FLOP/s')} (n={v['n']}, {v['instances']} x {v['threads']} threads)"
            for p, v in peaks.items()
        )
    )
    for row in util.get("rows", []):
        fraction = row.get("fraction_of_peak")
        lines.append(
            f"   {row['model'] + ': ' + row['path'] + ', batch ' + str(row['batch']):<42} {row['precision']:<5} "
            f"{row['events_per_s'] or 0:>9,.1f}/s  {_si(row.get('flops_per_event'), 'FLOP')}/event  "
            f"{_si(row.get('achieved_flops_per_s'), 'FLOP/s'):>14}  "
            + ("n/a" if fraction is None else f"{100 * fraction:5.1f}% of the {row['precision']} peak")
        )
    return lines


def multilingual_lines(multi: dict[str, Any] | None) -> list[str]:
    if not multi:
        return []
    if multi.get("skipped"):
        return [f"multilingual encoder: skipped: {multi['skipped']}"]
    lines = [
        f"multilingual encoder ({multi.get('model')}, {multi.get('config')}, random heads), model only, "
        "events/s and tokens/s (events/s x mean tokens) against MiniLM's on English at the same precision:"
    ]
    for row in multi.get("rows", []):
        ratio = row.get("per_token_over_minilm")
        lines.append(
            f"   {row['language']:<3} {row['precision']:<5} batch {row['batch']:<4} {row['events_per_s']:>9,.1f}/s  "
            f"~{row['mean_tokens']:.1f} tok  {row['tokens_per_s']:>10,.0f} tok/s  "
            + ("vs MiniLM n/a" if ratio is None else f"{ratio:.2f}x MiniLM's per-token rate")
        )
    return lines


def cores_text(cores: dict[str, float]) -> str:
    """Cores busy by whom: the worker, the bench's producer and consumer, the rest (broker, Redis, others)."""
    names = {"worker": "worker", "bench": "bench producer+consumer", "other": "broker, Redis, other"}
    return ", ".join(f"{names[k]} {cores[k]:.2f}" for k in names if k in cores)


def sustainable_lines(report: dict[str, Any]) -> list[str]:
    found = report.get("sustainable")
    if not found:
        return []
    steps = ", ".join(
        f"{s['offered_events_per_s']:,.0f}/s p99 {s['p99_ms']:.0f} ms {'ok' if s['holds'] else 'no'}"
        + (f" ({cores_text(s['cores'])})" if s.get("cores") else "")
        for s in found.get("steps", [])
    )
    rate = found.get("events_per_s")
    head = (
        f"sustainable rate (p99 <= {found['p99_limit_ms']:.0f} ms): {rate:,.0f}/s = {found['fraction_of_peak']:.2f} "
        f"of the burst peak {found['burst_peak_events_per_s']:,.0f}/s"
        if rate
        else f"sustainable rate (p99 <= {found['p99_limit_ms']:.0f} ms): no step held"
    )
    return [head, f"   search steps: {steps}"]


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    sweep = report.get("batch_sweep") or []
    if sweep:
        left.plot(
            [s["batch"] for s in sweep],
            [s["events_per_s"] for s in sweep],
            "o-",
            label=f"model only, {_get(report, 'B', 'precision')}",
        )
    fp32 = _get(report, "model_only", "precisions", "fp32", "batch64", "events_per_s")
    if fp32:
        left.plot([64], [fp32], "s", label="fp32, batch 64")
    for key, style, name in (("C", "--", "C worker, cold"), ("A", ":", "A naive loop")):
        value = _get(report, key, "events_per_s")
        if value:
            left.axhline(
                value, linestyle=style, color="gray" if key == "A" else "tab:green", label=f"{name} ({value:,.0f}/s)"
            )
    left.set_xscale("log", base=2)
    left.set_xlabel("batch size (texts)")
    left.set_ylabel("texts / s")
    left.set_title("Throughput vs batch size (short texts)")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    points = report.get("latency") or []
    if points:
        x = [p["offered_events_per_s"] for p in points]
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
            right.plot(x, [p[key] for p in points], style, label=key.replace("_ms", ""))
        right.axhline(250, color="red", linestyle=":", label="p99 target 250 ms")
    found = report.get("sustainable") or {}
    steps = found.get("steps") or []
    if steps:
        right.plot(
            [s["offered_events_per_s"] for s in steps],
            [s["p99_ms"] for s in steps],
            "x",
            color="gray",
            label="search p99",
        )
    if found.get("events_per_s"):
        right.axvline(found["events_per_s"], color="tab:green", linestyle="--", label="sustainable rate")
    right.set_xlabel("offered load (events / s)")
    right.set_ylabel("end-to-end latency (ms)")
    right.set_title("Latency vs offered load (worker, cold cache)")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    meta = report.get("meta", {})
    fig.suptitle(
        f"bertstream bench {meta.get('date', '')} — {meta.get('cpu', '')}, device {meta.get('device', '')}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    png = out.with_suffix(".png")
    write_plot(report, png)
    return png
