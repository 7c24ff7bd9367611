"""Model-only throughput of a BERT-base-sized encoder (12 layers, hidden 768, 110M parameters).

No BERT-base weights can be had offline, so the encoder has random weights and the default heads'
shapes (labels, pooled layers, hidden size) rebuilt for hidden 768, dense part only: the figures
are speed, not accuracy. Same tokenizer, windows and batching as the default model.
"""

from __future__ import annotations

from typing import Any

from bertstream.bench.model import throughput


def heads_for(heads: list[str], hidden: int) -> dict[str, Any]:
    """The heads' shapes (labels, pooled layers, hidden size) rebuilt for `hidden`-wide features,
    random weights: for speed figures only."""
    from pipelines.heads import Head, HeadSpec, load_head
    from pipelines.registry import resolve_head_dir, task_name

    built: dict[str, Head] = {}
    for ref in heads:
        spec = load_head(resolve_head_dir(ref))[0].spec
        built[task_name(ref)] = Head(
            HeadSpec(name=spec.name, labels=spec.labels, input_dim=hidden, layers=spec.layers, hidden=spec.hidden)
        ).eval()
    return built


def base_sized_classifier(
    precision: str,
    heads: list[str],
    device: str,
    instances: int = 1,
    token_budget: int | None = None,
    max_batch: int | None = None,
) -> Any:
    """`token_budget` / `max_batch`: the encoder's padded tokens and windows per forward pass
    (None: the encoder's defaults)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipelines.classifier import Classifier
    from pipelines.encoder import Encoder, EncoderSettings
    from pipelines.registry import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    # The worker's engine plan (model instances and threads), as for B.
    budget = {k: v for k, v in (("token_budget", token_budget), ("max_batch", max_batch)) if v}
    encoder = Encoder(
        EncoderSettings(device=device, precision=precision, instances=instances, **budget),
        model=model,
        tokenizer=tokenizer,
    )
    return Classifier(encoder, heads_for(heads, 768))


def run_base_suite(
    heads: list[str],
    tasks: list[str],
    texts: list[str],
    device: str,
    precisions: list[str],
    batch: int,
    min_seconds: float,
    log: Any,
    instances: int = 1,
) -> dict[str, Any]:
    """events/s at batch `batch` for each precision, and the encoder's parameter count."""
    import gc

    out: dict[str, Any] = {"config": "BertModel 12 layers, hidden 768, 12 heads, random weights", "precisions": {}}
    for precision in precisions:
        log(f"BERT-base-sized, model only: {precision}, batch {batch}")
        classifier = base_sized_classifier(precision, heads, device, instances)
        out["params_millions"] = round(sum(p.numel() for p in classifier.encoder.model.parameters()) / 1e6, 1)
        out["precisions"][precision] = throughput(classifier, texts, tasks, batch, min_seconds, min_texts=2 * batch)
        del classifier
        gc.collect()
    return out
