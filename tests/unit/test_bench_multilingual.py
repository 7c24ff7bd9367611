"""The multilingual encoder's bench rows, on a tiny stand-in model directory (a 6-layer, 32-wide
random BERT with MiniLM's tokenizer: the bench heads read layers 2, 4 and 6), and the skip line
when the encoder is not built. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertstream.bench import data as bench_data
from bertstream.bench import multilingual

HEADS = ["news_topic", "sentiment"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64
    )
    path = tmp_path_factory.mktemp("encoders") / multilingual.NAME
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_skipped_with_a_line_when_not_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = pytest.importorskip("pipelines.registry")
    if not hasattr(registry, "multilingual_model_dir"):
        pytest.skip("this checkout has no multilingual encoder directory")
    monkeypatch.setenv("BERTSTREAM_CACHE_DIR", str(tmp_path))
    path, why = multilingual.multilingual_dir()
    assert path is None and "not built" in why and str(tmp_path) in why
    seen: list[str] = []
    out = multilingual.run_multilingual_suite(HEADS, HEADS, {"en": ["x"]}, "cpu", ["fp32"], 4, 0.01, seen.append)
    assert out == {"skipped": why} and seen == [f"multilingual encoder: skipped: {why}"]


def test_rows_per_precision_and_language(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(multilingual, "multilingual_dir", lambda: (model_dir, ""))
    texts = {"en": bench_data.short_texts(8, "t"), "zh": bench_data.chinese_texts(8, "t")}
    out = multilingual.run_multilingual_suite(
        HEADS,
        HEADS,
        texts,
        "cpu",
        ["bf16", "fp32"],
        batch=4,
        min_seconds=0.01,
        log=lambda m: None,
        instances=1,
        minilm_tokens_per_s={"bf16": 1000.0},
        rounds=1,
    )
    rows = {(r["precision"], r["language"]): r for r in out["rows"]}
    assert set(rows) == {("bf16", "en"), ("bf16", "zh"), ("fp32", "en"), ("fp32", "zh")}
    for (precision, _), row in rows.items():
        assert row["events_per_s"] > 0 and row["mean_tokens"] > 0
        assert row["tokens_per_s"] == round(row["events_per_s"] * row["mean_tokens"], 1)
        assert row["flops_per_event"] > 0
        if precision == "bf16":
            assert row["per_token_over_minilm"] == round(row["tokens_per_s"] / 1000.0, 3)
        else:
            assert row["per_token_over_minilm"] is None  # no MiniLM figure at fp32 given
    assert out["config"].startswith("6 layers, hidden 32")
    assert out["flops"]["zh"]["formula_over_counted"] == 1.0


def test_chinese_texts_are_short_distinct_and_tagged() -> None:
    texts = bench_data.chinese_texts(30, "run")
    assert len(set(texts)) == 30 and all("run-" in t for t in texts)
    assert all(len(t) < 60 for t in texts)
