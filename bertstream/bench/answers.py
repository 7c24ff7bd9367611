"""Answer retrieval cost: encoding the questions vs searching knowledge bases of 1k, 10k and 100k entries.

The search is the real `KnowledgeBase.answer` (one matrix product, best phrasing per entry, top-k,
the result dicts) over random unit vectors: its cost depends on the sizes, not on the content. The
encoder cost is measured apart on the demo's English and Chinese questions, so the table shows
which of the two dominates at each size.

Run alone: `python -m bertstream.bench.answers` (or as part of `bertstream bench`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

SIZES = (1_000, 10_000, 100_000)
PHRASINGS = 3  # per entry
BATCH = 64  # questions per call, as the worker's micro-batches
EVAL_FILE = Path(__file__).resolve().parents[1] / "demo" / "data" / "support_eval.jsonl"


def _timed(call: Callable[[], Any], items: int, min_seconds: float, min_calls: int = 3) -> dict[str, float]:
    """Items/s of `call` (each handles `items`) in wall time, and CPU-ms per item (this process, all
    threads: steadier than wall time on a shared machine). One warm-up call first."""
    call()
    calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while calls < min_calls or time.perf_counter() - started < min_seconds:
        call()
        calls += 1
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"per_s": items * calls / wall, "cpu_ms": 1000 * cpu / (items * calls)}


def synthetic_kb(entries: int, hidden: int, device: str, phrasings: int = PHRASINGS, seed: int = 0) -> Any:
    import torch

    from pipelines.answers import AnswerSettings, Entry, KnowledgeBase

    generator = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(torch.randn(entries * phrasings, hidden, generator=generator), dim=1)
    answers = torch.nn.functional.normalize(torch.randn(entries, hidden, generator=generator), dim=1)
    rows = [Entry(f"e{i}", tuple(f"q{i}.{j}" for j in range(phrasings)), f"a{i}") for i in range(entries)]
    return KnowledgeBase(
        AnswerSettings(Path("synthetic.jsonl")),
        rows,
        vectors,
        content=f"synthetic-{entries}",
        encoder_version="none",
        device=device,
        answers=answers,  # scored as the default settings do: best phrasing + answer
    )


def encode_rate(model: str | Path | None, device: str, precision: str, min_seconds: float) -> dict[str, Any]:
    from pipelines.encoder import Encoder, EncoderSettings
    from pipelines.registry import resolve_model_dir

    encoder = Encoder(EncoderSettings(model_dir=resolve_model_dir(model), device=device, precision=precision))
    questions = [json.loads(line)["question"] for line in EVAL_FILE.read_text(encoding="utf-8").splitlines() if line]
    batch = (questions * (BATCH // len(questions) + 1))[:BATCH]
    timed = _timed(lambda: encoder.embed(batch), BATCH, min_seconds)
    return {"encoder": encoder.name, "precision": encoder.precision, "hidden": encoder.hidden_size, **timed}


def run_answers_bench(
    device: str = "cpu",
    precision: str = "auto",
    min_seconds: float = 2.0,
    sizes: tuple[int, ...] = SIZES,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Questions/s of encoding (per built encoder) and of search (per KB size), at batch 64 and alone."""
    import gc
    import os

    import torch

    from pipelines.registry import ModelNotFoundError

    load_at_start = os.getloadavg()[0]
    encoders: dict[str, Any] = {}
    for name in ("minilm", "multilingual"):
        try:
            log(f"answers: encoding questions with {name}")
            encoders[name] = encode_rate(name, device, precision, min_seconds)
        except ModelNotFoundError as exc:
            log(f"answers: {name} skipped ({exc})")
    hidden = next(iter(encoders.values()))["hidden"] if encoders else 384
    generator = torch.Generator().manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(BATCH, hidden, generator=generator), dim=1)
    search = []
    for entries in sizes:
        log(f"answers: search over {entries:,} entries")
        search.append(search_row(synthetic_kb(entries, hidden, device), queries, min_seconds))
        gc.collect()
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "batch": BATCH,
        "phrasings_per_entry": PHRASINGS,
        "load_average": [load_at_start, os.getloadavg()[0]],
        "encode": encoders,
        "search": search,
    }


def search_row(kb: Any, queries: Any, min_seconds: float) -> dict[str, Any]:
    return {
        "entries": len(kb),
        "phrasings": len(kb.phrasings),
        "vectors_mb": round(kb.vectors.numel() * kb.vectors.element_size() / 2**20, 1),
        **_timed(lambda: kb.answer(queries), len(queries), min_seconds),
        "single_ms": 1000 / _timed(lambda: kb.answer(queries[:1]), 1, min_seconds / 2)["per_s"],
    }


def format_table(result: dict[str, Any]) -> str:
    """One table; "search share" is search's part of the CPU time per question (encode + search)."""
    encoders = result["encode"]
    lines = [
        f"answer retrieval, {result['device']} ({result['threads']} threads), batch {result['batch']}: "
        f"KB of random unit vectors, {result['phrasings_per_entry']} phrasings per entry, exact search; "
        f"load average {result['load_average'][0]:.1f} at start, {result['load_average'][1]:.1f} at end",
        "encode only: "
        + (
            ", ".join(
                f"{name} ({e['precision']}) {e['per_s']:,.0f} questions/s, {e['cpu_ms']:.2f} CPU-ms each"
                for name, e in encoders.items()
            )
            or "none"
        ),
    ]
    head = f"{'entries':>9s} {'phrasings':>9s} {'MB':>7s} {'search q/s':>10s} {'CPU-ms/q':>8s} {'1 question':>10s}"
    for name in encoders:
        head += f" {'encode+search q/s ' + name:>30s} {'search share':>12s}"
    lines.append(head)
    for row in result["search"]:
        line = (
            f"{row['entries']:9,d} {row['phrasings']:9,d} {row['vectors_mb']:7.1f} {row['per_s']:10,.0f} "
            f"{row['cpu_ms']:8.3f} {row['single_ms']:8.2f}ms"
        )
        for e in encoders.values():
            total = 1 / (1 / e["per_s"] + 1 / row["per_s"])
            line += f" {total:30,.0f} {row['cpu_ms'] / (row['cpu_ms'] + e['cpu_ms']):12.0%}"
        lines.append(line)
    return "\n".join(lines)


@click.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", default="auto", show_default=True, help="The encoders' precision.")
@click.option("--min-seconds", type=float, default=2.0, show_default=True, help="Timing per figure.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the figures as JSON.")
def main(device: str, precision: str, min_seconds: float, out: Path | None) -> None:
    """Answer retrieval: encode vs search cost at 1k, 10k and 100k entries."""
    from pipelines.numerics import resolve_device

    result = run_answers_bench(
        str(resolve_device(device)), precision, min_seconds, log=lambda m: click.echo(m, err=True)
    )
    click.echo(format_table(result))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
