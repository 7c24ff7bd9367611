"""Hashed word n-gram TF-IDF features with no stored vocabulary, for hybrid heads.

A text is lower-cased and split into tokens: words (``\\b\\w\\w+\\b``, as scikit-learn's default),
or with ``tokens = "han_chars"`` every Han ideograph on its own and the other words as before, so
that Chinese, written without spaces, gets character n-grams and English still gets words. Token
1..n-grams are hashed with CRC-32 into ``n_features`` buckets (the HashingVectorizer idea, with
a hash every Python has). Training keeps the ``buckets`` most informative buckets (document
frequency >= ``min_df``, ranked by a chi-square score against the labels) and their idf; the
head stores only those bucket ids, the idf and a linear layer, so no word list is ever stored.
Values are sublinear tf (1 + log tf) x idf, L2-normalised per text, as in TF-IDF baselines.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.language import HAN_CLASS

TOKEN = re.compile(r"(?u)\b\w\w+\b")
TOKENIZERS = {"words": TOKEN, "han_chars": re.compile(rf"[{HAN_CLASS}]|(?:(?![{HAN_CLASS}])\w){{2,}}")}
DEFAULTS = {"n_features": 1 << 20, "ngram_max": 2, "min_df": 2, "max_chars": 100_000, "tokens": "words"}


def _tokenizer(tokens: str) -> re.Pattern[str]:
    if tokens not in TOKENIZERS:
        raise ValueError(f"unknown n-gram tokens {tokens!r}: one of {', '.join(TOKENIZERS)}")
    return TOKENIZERS[tokens]


def _hashed_counts(
    text: str, tokenizer: re.Pattern[str], n_features: int, ngram_max: int, max_chars: int
) -> dict[int, int]:
    words = tokenizer.findall(text[:max_chars].lower())
    counts: dict[int, int] = {}
    crc = zlib.crc32
    mask = n_features - 1
    for n in range(1, ngram_max + 1):
        for i in range(len(words) - n + 1):
            gram = words[i] if n == 1 else " ".join(words[i : i + n])
            b = crc(gram.encode("utf-8")) & mask
            counts[b] = counts.get(b, 0) + 1
    return counts


@dataclass
class NgramFeaturizer:
    buckets: list[int]  # kept hash buckets, sorted
    idf: list[float]
    n_features: int = DEFAULTS["n_features"]
    ngram_max: int = DEFAULTS["ngram_max"]
    max_chars: int = DEFAULTS["max_chars"]
    tokens: str = DEFAULTS["tokens"]

    def __post_init__(self) -> None:
        self._tokenizer = _tokenizer(self.tokens)
        self._column = {b: j for j, b in enumerate(self.buckets)}
        self._idf = np.asarray(self.idf, dtype=np.float32)

    @classmethod
    def fit(
        cls, texts: Sequence[str], labels: Sequence[int], n_classes: int, *, buckets: int, **options: Any
    ) -> NgramFeaturizer:
        opts = {**DEFAULTS, **options}
        n_features = int(opts["n_features"])
        if n_features & (n_features - 1):
            raise ValueError("n_features must be a power of two")
        df = np.zeros(n_features, dtype=np.int64)
        class_tf = np.zeros((n_classes, n_features), dtype=np.float32)
        tokens = str(opts["tokens"])
        tokenizer = _tokenizer(tokens)
        docs = [_hashed_counts(t, tokenizer, n_features, int(opts["ngram_max"]), int(opts["max_chars"])) for t in texts]
        for counts, y in zip(docs, labels):
            keys = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            df[keys] += 1
            class_tf[y, keys] += 1.0  # document presence per class
        n_docs = len(texts)
        eligible = df >= int(opts["min_df"])
        # chi-square of bucket presence vs class (as sklearn.feature_selection.chi2 on binary features)
        class_n = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
        observed = class_tf.astype(np.float64)
        expected = np.outer(class_n / n_docs, df.astype(np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            chi = np.where(expected > 0, (observed - expected) ** 2 / expected, 0.0).sum(axis=0)
        chi[~eligible] = -1.0
        k = min(buckets, int(eligible.sum()))
        keep = np.sort(np.argpartition(-chi, k - 1)[:k]) if k > 0 else np.zeros(0, dtype=np.int64)
        idf = np.log((1 + n_docs) / (1 + df[keep])) + 1.0
        return cls(
            [int(b) for b in keep],
            [float(v) for v in idf],
            n_features,
            int(opts["ngram_max"]),
            int(opts["max_chars"]),
            tokens,
        )

    def spec(self) -> dict[str, Any]:
        return {
            "buckets": len(self.buckets),
            "n_features": self.n_features,
            "ngram_max": self.ngram_max,
            "max_chars": self.max_chars,
            "hash": "crc32",
            "tokens": self.tokens,
            "token_pattern": self._tokenizer.pattern,
            "weighting": "sublinear tf * idf, l2",
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], buckets: list[int], idf: list[float]) -> NgramFeaturizer:
        return cls(
            buckets,
            idf,
            int(spec.get("n_features", DEFAULTS["n_features"])),
            int(spec.get("ngram_max", 2)),
            int(spec.get("max_chars", DEFAULTS["max_chars"])),
            str(spec.get("tokens", DEFAULTS["tokens"])),  # heads trained before the option count words
        )

    def transform(self, texts: Sequence[str]) -> torch.Tensor:
        """A sparse COO float32 tensor [len(texts), len(buckets)]."""
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        column = self._column
        for i, text in enumerate(texts):
            counts = _hashed_counts(text, self._tokenizer, self.n_features, self.ngram_max, self.max_chars)
            js, vs = [], []
            for b, c in counts.items():
                j = column.get(b)
                if j is not None:
                    js.append(j)
                    vs.append((1.0 + math.log(c)) * self._idf[j])
            if js:
                norm = math.sqrt(sum(v * v for v in vs))
                rows.extend([i] * len(js))
                cols.extend(js)
                vals.extend(v / norm for v in vs)
        index = torch.tensor([rows, cols], dtype=torch.int64) if rows else torch.zeros(2, 0, dtype=torch.int64)
        return torch.sparse_coo_tensor(
            index, torch.tensor(vals, dtype=torch.float32), (len(texts), len(self.buckets)), check_invariants=False
        ).coalesce()
