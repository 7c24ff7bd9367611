"""How consistent are the VADER sentiment labels themselves: can any model reach macro-F1 0.80 on them?

A label is the class of the mean of 10-20+ human ratings at +-0.5. Two estimates of the agreement
a perfect model could reach on the test split:
- another panel of the same size (the raters resampled with replacement) against the label;
- one half of the raters against the other half (both panels smaller: a lower bound).

Run: `.venv/bin/python docs/experiments/vader_label_ceiling.py` (needs `bertstream data vader`).
"""

from __future__ import annotations

import numpy as np

from pipelines.training.datasets import load, vader_label, vader_ratings
from pipelines.training.metrics import summary_metrics

REPEATS = 20


def main() -> None:
    data = load("vader")
    ratings = vader_ratings()
    index = {label: i for i, label in enumerate(data.labels)}
    y = [index[label] for _, label in data.test]
    panels = [np.asarray(ratings[text], dtype=float) for text, _ in data.test]
    klass = lambda m: index[vader_label(float(m))]  # noqa: E731
    rng = np.random.default_rng(0)
    boot, half = [], []
    for _ in range(REPEATS):
        boot.append(summary_metrics(y, [klass(rng.choice(r, len(r)).mean()) for r in panels], 3)["macro_f1"])
        a, b = [], []
        for r in panels:
            p = rng.permutation(len(r))
            a.append(klass(r[p[: len(r) // 2]].mean()))
            b.append(klass(r[p[len(r) // 2 :]].mean()))
        half.append(summary_metrics(b, a, 3)["macro_f1"])
    print(f"test texts {len(y)}, raters per text: median {int(np.median([len(r) for r in panels]))}")
    print(f"resampled panel vs label:        macro-F1 {np.mean(boot):.4f} +- {np.std(boot):.4f}")
    print(f"half of the panel vs other half: macro-F1 {np.mean(half):.4f} +- {np.std(half):.4f}")


if __name__ == "__main__":
    main()
