"""FLOP utilization: the machine's practical matrix-multiply peak and the encoder's FLOPs per event.

- peak: square `torch.mm` in the precision's dtype, run as B runs the model (the same number of
  concurrent instances, each with the same torch intra-op threads), best over a few sizes;
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` around the encoder pass on real bench batches
  (padding included: that is what the hardware executes), cross-checked by the formula
  2 x linear weights x tokens + 4 x batch x length^2 x hidden per layer (attention scores and values).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CPU_SIZES = (1024, 2048)
CUDA_SIZES = (4096, 8192)
COUNT_METHOD = "torch.utils.flop_counter.FlopCounterMode on the encoder pass of real bench batches"


def mm_flops(n: int) -> int:
    """FLOPs of one n x n by n x n matrix multiply (a multiply and an add per term)."""
    return 2 * n**3


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _time_mm(n: int, dtype: Any, device: str, instances: int, min_seconds: float) -> tuple[int, float]:
    """(matrix multiplies done, wall seconds): `instances` threads each multiplying until `min_seconds`."""
    import torch

    pairs = [(torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype))]
    pairs += [(a.clone(), b.clone()) for a, b in pairs * (instances - 1)]
    for a, b in pairs:  # warm-up: kernels chosen, pages touched
        torch.mm(a, b)
    _sync(device)
    counts = [0] * instances
    started = time.perf_counter()

    def loop(i: int) -> None:
        a, b = pairs[i]
        while True:  # at least one round
            for _ in range(8 if device.startswith("cuda") else 1):  # queue a few kernels per check on a GPU
                torch.mm(a, b)
                counts[i] += 1
            _sync(device)
            if time.perf_counter() - started >= min_seconds:
                return

    threads = [threading.Thread(target=loop, args=(i,), name=f"bench-peak-{i}") for i in range(instances)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _sync(device)
    return sum(counts), time.perf_counter() - started


def gemm_peak(
    precision: str,
    device: str = "cpu",
    instances: int = 1,
    threads: int | None = None,
    sizes: tuple[int, ...] | None = None,
    min_seconds: float = 0.5,
) -> dict[str, Any]:
    """The best FLOP/s of square matrix multiplies over `sizes`: the practical peak of this precision.

    On the CPU, `instances` threads multiply at once with `threads` torch intra-op threads (B's plan)."""
    import torch

    sizes = sizes or (CUDA_SIZES if device.startswith("cuda") else CPU_SIZES)
    dtype = getattr(torch, DTYPES[precision])
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    by_size: dict[str, float] = {}
    try:
        for n in sizes:
            count, seconds = _time_mm(n, dtype, device, max(1, instances), min_seconds)
            by_size[str(n)] = count * mm_flops(n) / seconds
    finally:
        torch.set_num_threads(before)
    best = max(by_size, key=lambda k: by_size[k])
    return {
        "precision": precision,
        "device": device,
        "instances": max(1, instances),
        "threads": threads or before,
        "n": int(best),
        "flops_per_s": round(by_size[best]),
        "gflops_per_s_by_size": {k: round(v / 1e9, 1) for k, v in by_size.items()},
    }


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    """The CPU's fused attention kernel, which FlopCounterMode has no formula for: the same count
    as its CUDA kernels (scores and weighted values)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(FLOPs counted while `fn` runs, its result)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping: dict[Any, Any] = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        result = fn()
    return int(counter.get_total_flops()), result


def formula_flops(config: Any, batches: list[tuple[int, int]], pooler: bool = False) -> int:
    """Encoder FLOPs by formula for forward passes of (sequences, padded length)."""
    h, layers, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    weights = 4 * h * h + 2 * h * inner  # query, key, value, output; the two feed-forward matrices
    total = 0
    for b, s in batches:
        total += layers * (2 * b * s * weights + 4 * b * s * s * h)
        if pooler:
            total += 2 * b * h * h
    return total


def encoder_flops(classifier: Any, texts: list[str], batch: int, max_chunks: int = 4) -> dict[str, Any]:
    """FLOPs per event of the encoder on the first `max_chunks` chunks of `batch` texts, as B runs them
    (the encoder's own token-budget batches and padding)."""
    import torch

    encoder = classifier.encoder
    flops = events = tokens = padded = 0
    shapes: list[tuple[int, int]] = []
    for start in range(0, min(len(texts), batch * max_chunks), batch):
        windows = encoder.windows(texts[start : start + batch])
        with torch.inference_mode():
            counted, encoded = count_flops(lambda w=windows: encoder.encode_windows(w, classifier.layers))
        for group in encoder._batches(windows.input_ids):
            longest = max(len(windows.input_ids[i]) for i in group)
            shapes.append((len(group), longest))
            padded += len(group) * longest
        flops += counted
        tokens += encoded.tokens
        events += len(windows.truncated)
    model = encoder.model
    pooler = getattr(model, "pooler", None) is not None
    by_formula = formula_flops(model.config, shapes, pooler)
    return {
        "method": COUNT_METHOD,
        "batch": batch,
        "events_counted": events,
        "flops_per_event": round(flops / max(1, events)),
        "tokens_per_event": round(tokens / max(1, events), 2),
        "padded_tokens_per_event": round(padded / max(1, events), 2),
        "formula_flops_per_event": round(by_formula / max(1, events)),
        "formula_over_counted": round(by_formula / flops, 4) if flops else None,
    }


def utilization(events_per_s: float | None, flops_per_event: float | None, peak: float | None) -> dict[str, Any]:
    """Achieved FLOP/s of a throughput figure and its fraction of the peak."""
    if not events_per_s or not flops_per_event:
        return {"achieved_flops_per_s": None, "fraction_of_peak": None}
    achieved = events_per_s * flops_per_event
    return {
        "achieved_flops_per_s": round(achieved),
        "peak_flops_per_s": peak,
        "fraction_of_peak": round(achieved / peak, 4) if peak else None,
    }


def utilization_rows(
    model: str,
    figures: list[tuple[str, str, int, float | None]],
    flops_by_batch: dict[str, dict[str, Any]],
    peaks: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per (path, precision, batch, events/s): achieved FLOP/s against that precision's peak."""
    rows = []
    for path, precision, batch, events_per_s in figures:
        per_event = (flops_by_batch.get(str(batch)) or {}).get("flops_per_event")
        peak = (peaks.get(precision) or {}).get("flops_per_s")
        rows.append(
            {
                "model": model,
                "path": path,
                "precision": precision,
                "batch": batch,
                "events_per_s": events_per_s,
                "flops_per_event": per_event,
                **utilization(events_per_s, per_event, peak),
            }
        )
    return rows
