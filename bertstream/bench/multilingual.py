"""The multilingual encoder (multilingual-e5-small), model only: B-style rows on short Chinese and English texts.

It is built by `bertstream encoders build` into `pipelines.registry.multilingual_model_dir()`;
when that directory has no config.json the rows are skipped with a line saying so. The heads are
the bench heads' shapes on random weights (speed only, as for the BERT-base-sized encoder).

Per-token rate = events/s x mean tokens per text (its own tokenizer, special tokens included):
the two encoders split texts into different numbers of tokens, so events/s alone does not compare them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bertstream.bench.base import heads_for
from bertstream.bench.data import mean_tokens
from bertstream.bench.flops import encoder_flops
from bertstream.bench.model import _median, throughput

NAME = "multilingual-e5-small"


def multilingual_dir() -> tuple[Path | None, str]:
    """(the built encoder's directory, '') or (None, why it is skipped)."""
    try:
        from pipelines.registry import multilingual_model_dir
    except ImportError:
        return None, "this checkout has no multilingual encoder (pipelines.registry.multilingual_model_dir)"
    path = multilingual_model_dir()
    if not (path / "config.json").is_file():
        return None, f"the multilingual encoder is not built ({path} has no config.json; `bertstream encoders build`)"
    return path, ""


def multilingual_classifier(path: Path, precision: str, heads: list[str], device: str, instances: int) -> Any:
    from pipelines.classifier import Classifier
    from pipelines.encoder import Encoder, EncoderSettings

    encoder = Encoder(EncoderSettings(model_dir=path, device=device, precision=precision, instances=instances))
    return Classifier(encoder, heads_for(heads, encoder.hidden_size))


def run_multilingual_suite(
    heads: list[str],
    tasks: list[str],
    texts: dict[str, list[str]],
    device: str,
    precisions: list[str],
    batch: int,
    min_seconds: float,
    log: Callable[[str], None],
    instances: int = 1,
    minilm_tokens_per_s: dict[str, float] | None = None,
    rounds: int = 3,
) -> dict[str, Any]:
    """events/s and tokens/s per precision and language (`texts`: language -> texts), measured
    interleaved in `rounds` rounds (median kept), FLOPs per event, and the per-token rate over
    MiniLM's at the same precision (`minilm_tokens_per_s`: precision -> tokens/s on English)."""
    path, why = multilingual_dir()
    if path is None:
        log(f"multilingual encoder: skipped: {why}")
        return {"skipped": why}
    classifiers = {}
    for precision in precisions:
        log(f"multilingual encoder: loading at {precision}")
        classifiers[precision] = multilingual_classifier(path, precision, heads, device, instances)
    first = next(iter(classifiers.values()))
    tokens = {lang: round(mean_tokens(first.encoder.tokenizer, t), 1) for lang, t in texts.items()}
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(rounds):
        log(f"multilingual encoder: batch {batch}, every precision and language, round {r + 1}/{rounds}")
        for precision, classifier in classifiers.items():
            for lang, items in texts.items():
                figure = throughput(classifier, items, tasks, batch, min_seconds / rounds, min_texts=2 * batch)
                samples.setdefault((precision, lang), []).append(figure)
    counter = next((c for p, c in classifiers.items() if p != "int8"), first)
    log("multilingual encoder: FLOPs per event (FlopCounterMode)")
    flops = {lang: encoder_flops(counter, items, batch) for lang, items in texts.items()}
    rows = []
    for (precision, lang), figures in samples.items():
        fig = _median(figures)
        per_token = round(fig["events_per_s"] * tokens[lang], 1)
        minilm = (minilm_tokens_per_s or {}).get(precision)
        rows.append(
            {
                "precision": precision,
                "language": lang,
                "batch": batch,
                "events_per_s": fig["events_per_s"],
                "samples_events_per_s": fig["samples_events_per_s"],
                "mean_tokens": tokens[lang],
                "tokens_per_s": per_token,
                "minilm_tokens_per_s": minilm,
                "per_token_over_minilm": round(per_token / minilm, 3) if minilm else None,
                "flops_per_event": flops[lang]["flops_per_event"],
            }
        )
    config = first.encoder.model.config
    out = {
        "model": NAME,
        "model_dir": str(path),
        "config": f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, vocabulary {config.vocab_size:,}",
        "params_millions": round(sum(p.numel() for p in first.encoder.model.parameters()) / 1e6, 1),
        "mean_tokens": tokens,
        "flops": flops,
        "rows": rows,
    }
    classifiers.clear()
    return out
