"""The hashed n-gram featurizer of hybrid heads: tokens, spec round trip, normalisation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.ngrams import TOKENIZERS, NgramFeaturizer

TEXTS = ["服务很差，我再也不来了。", "服务很好，下次还来。", "The service was bad.", "很好 very good service"]
LABELS = [0, 1, 0, 1]


def test_words_read_a_chinese_sentence_as_one_token():
    # Why Chinese needs its own tokens: without spaces, a clause is a single "word".
    assert TOKENIZERS["words"].findall("服务很差，我再也不来了。") == ["服务很差", "我再也不来了"]


def test_han_chars_split_ideographs_and_keep_other_words():
    tokens = TOKENIZERS["han_chars"].findall("服务很差 the service was BAD, 3 stars 𠀀")
    assert tokens == ["服", "务", "很", "差", "the", "service", "was", "BAD", "stars", "𠀀"]


def test_han_chars_gives_character_ngrams():
    feats = NgramFeaturizer.fit(TEXTS, LABELS, 2, buckets=10_000, min_df=1, ngram_max=3, tokens="han_chars")
    words = NgramFeaturizer.fit(TEXTS, LABELS, 2, buckets=10_000, min_df=1, ngram_max=3)
    # "服务" and "很" are shared by the first two texts only as characters.
    assert len(feats.buckets) > len(words.buckets)
    x = feats.transform(TEXTS[:2]).to_dense()
    assert float(x[0] @ x[1]) > 0.0
    y = words.transform(TEXTS[:2]).to_dense()
    assert float(y[0] @ y[1]) == 0.0


def test_spec_round_trip_keeps_tokens():
    feats = NgramFeaturizer.fit(TEXTS, LABELS, 2, buckets=64, min_df=1, ngram_max=3, tokens="han_chars")
    spec = feats.spec()
    assert spec["tokens"] == "han_chars"
    again = NgramFeaturizer.from_spec(spec, feats.buckets, feats.idf)
    assert torch.equal(again.transform(TEXTS).to_dense(), feats.transform(TEXTS).to_dense())


def test_spec_without_tokens_reads_words():
    feats = NgramFeaturizer.fit(TEXTS, LABELS, 2, buckets=64, min_df=1)
    spec = feats.spec()
    spec.pop("tokens")  # written before the option existed
    assert NgramFeaturizer.from_spec(spec, feats.buckets, feats.idf).tokens == "words"


def test_unknown_tokens_are_refused():
    with pytest.raises(ValueError, match="unknown n-gram tokens 'chars'"):
        NgramFeaturizer.fit(TEXTS, LABELS, 2, buckets=64, tokens="chars")
    with pytest.raises(ValueError, match="unknown n-gram tokens"):
        NgramFeaturizer([1], [1.0], tokens="bytes")


FITTED = NgramFeaturizer.fit(TEXTS * 2, LABELS * 2, 2, buckets=256, min_df=1, ngram_max=3, tokens="han_chars")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_rows_are_unit_length_or_empty(text):
    row = FITTED.transform([text]).to_dense()[0]
    norm = float(row.norm())
    assert norm == 0.0 or math.isclose(norm, 1.0, rel_tol=1e-5)
