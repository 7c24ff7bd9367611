"""The bench's FLOP utilization: the counted FLOPs against the formula, the peak's bookkeeping."""

from __future__ import annotations

import pytest
import torch

from bertstream.bench.flops import (
    count_flops,
    encoder_flops,
    formula_flops,
    gemm_peak,
    mm_flops,
    utilization,
    utilization_rows,
)

TEXTS = [
    "The central bank raised interest rates again.",
    "ok",
    "Quarterly results beat expectations; shares rose 5% in early trading.",
    "I loved the film, the acting was wonderful and the ending made me cry. " * 6,
]


def test_count_flops_of_a_matrix_multiply() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    flops, result = count_flops(lambda: torch.mm(a, b))
    assert flops == 2 * 8 * 16 * 4
    assert result.shape == (8, 4)
    assert mm_flops(8) == 2 * 8**3


def test_encoder_count_matches_the_formula_attention_included(classifier) -> None:
    figures = encoder_flops(classifier, TEXTS, batch=2)
    assert figures["events_counted"] == len(TEXTS)
    # FlopCounterMode has no formula for the CPU's fused attention kernel: the bench adds one, so
    # the count equals the formula with its attention terms, not just the linear layers.
    assert figures["formula_over_counted"] == 1.0
    config = classifier.encoder.model.config
    h, inner = config.hidden_size, config.intermediate_size
    linear_only = 2 * config.num_hidden_layers * (4 * h * h + 2 * h * inner) * figures["padded_tokens_per_event"]
    assert figures["flops_per_event"] > linear_only
    assert figures["padded_tokens_per_event"] >= figures["tokens_per_event"] > 0


def test_formula_terms() -> None:
    class Config:
        hidden_size, num_hidden_layers, intermediate_size = 4, 2, 8

    # per layer: 2*b*s*(4*16 + 2*4*8) + 4*b*s*s*4 with b=3, s=5
    per_layer = 2 * 3 * 5 * (64 + 64) + 4 * 3 * 25 * 4
    assert formula_flops(Config, [(3, 5)]) == 2 * per_layer
    assert formula_flops(Config, [(3, 5)], pooler=True) == 2 * per_layer + 2 * 3 * 16
    assert formula_flops(Config, [(3, 5), (1, 2)]) == formula_flops(Config, [(3, 5)]) + formula_flops(Config, [(1, 2)])


def test_gemm_peak_reports_the_best_size_and_restores_threads() -> None:
    before = torch.get_num_threads()
    peak = gemm_peak("fp32", "cpu", instances=2, threads=1, sizes=(16, 32), min_seconds=0.01)
    assert torch.get_num_threads() == before
    assert peak["n"] in (16, 32) and peak["instances"] == 2 and peak["threads"] == 1
    assert set(peak["gflops_per_s_by_size"]) == {"16", "32"}
    assert peak["flops_per_s"] > 0
    assert round(peak["flops_per_s"] / 1e9, 1) == max(peak["gflops_per_s_by_size"].values())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gemm_peak_runs_in_each_dtype(precision: str) -> None:
    assert gemm_peak(precision, "cpu", sizes=(16,), min_seconds=0.0)["flops_per_s"] > 0


def test_utilization_arithmetic() -> None:
    assert utilization(100.0, 2e6, 1e9) == {
        "achieved_flops_per_s": 200_000_000,
        "peak_flops_per_s": 1e9,
        "fraction_of_peak": 0.2,
    }
    assert utilization(None, 2e6, 1e9)["fraction_of_peak"] is None
    assert utilization(100.0, 2e6, None)["fraction_of_peak"] is None
    rows = utilization_rows(
        "minilm",
        [("B", "bf16", 64, 1000.0), ("model only, fp32", "fp32", 64, 400.0), ("odd", "int8", 32, 10.0)],
        {"64": {"flops_per_event": 5e8}},
        {"bf16": {"flops_per_s": 1e12}, "fp32": {"flops_per_s": 4e11}},
    )
    assert [r["fraction_of_peak"] for r in rows] == [0.5, 0.5, None]
    assert rows[0]["achieved_flops_per_s"] == 500_000_000_000
