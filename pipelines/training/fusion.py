"""The hashed n-gram part of a hybrid head: a linear SVM whose scores are added to the dense logits.

A linear SVM (scikit-learn's LinearSVC, squared hinge) is fitted on hashed TF-IDF n-grams (see
`pipelines.ngrams`); the head's logits become ``dense + beta * svm scores``, with the SVM's C
and the weight beta chosen on the validation split or by k-fold out-of-fold scores, then one
temperature over the fused logits. Needs scikit-learn at training time only; inference needs none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipelines.heads import Head, HeadSpec
from pipelines.ngrams import NgramFeaturizer
from pipelines.training.config import TrainConfig
from pipelines.training.dense import fit_head
from pipelines.training.metrics import summary_metrics
from pipelines.training.splits import stratified_folds, stratified_group_folds

NON_FEATURIZER_OPTIONS = ("C", "Cs", "betas", "temperature", "val_nll_calibrated", "folds")
BETAS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
TEMPERATURES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)  # only ever softens


def to_scipy(x: torch.Tensor) -> Any:
    import scipy.sparse as sp

    x = x.coalesce()
    i = x.indices().numpy()
    return sp.csr_matrix((x.values().numpy(), (i[0], i[1])), shape=tuple(x.shape))


def ngram_features(
    texts: Sequence[str],
    y: np.ndarray,
    fit_idx: Sequence[int],
    eval_idx: Sequence[int],
    n_classes: int,
    options: dict[str, Any],
) -> tuple[NgramFeaturizer, Any, Any]:
    """(featurizer, fit rows, eval rows): the featurizer fitted on the `fit_idx` texts, both sets as scipy CSR."""
    fit_options = {k: v for k, v in options.items() if k not in NON_FEATURIZER_OPTIONS}
    fit_texts = [texts[i] for i in fit_idx]
    featurizer = NgramFeaturizer.fit(fit_texts, y[list(fit_idx)].tolist(), n_classes, **fit_options)
    s_fit = to_scipy(featurizer.transform(fit_texts))
    s_eval = to_scipy(featurizer.transform([texts[i] for i in eval_idx]))
    return featurizer, s_fit, s_eval


def fit_svm(s_train: Any, y_train: np.ndarray, C: float, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """LinearSVC weights as (coef [n_classes, d], intercept [n_classes]): scores are ``s @ coef.T + intercept``."""
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=C).fit(s_train, y_train)
    coef, intercept = svm.coef_, svm.intercept_
    if n_classes == 2:  # binary LinearSVC: one score for class 1; as two logits (-s/2, +s/2)
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return coef, intercept


def beta_trials(
    dense: np.ndarray, sparse: np.ndarray, y: list[int], betas: Sequence[float], n_classes: int
) -> list[dict[str, float]]:
    """Accuracy, macro-F1 and log-loss of ``dense + beta * sparse`` for every beta."""
    y_t = torch.tensor(y)
    trials = []
    for beta in betas:
        fused = torch.as_tensor(dense + beta * sparse, dtype=torch.float32)
        m = summary_metrics(y, fused.argmax(dim=1).tolist(), n_classes)
        nll = float(nn.functional.cross_entropy(fused, y_t))
        trials.append({"beta": beta, "nll": round(nll, 5), **{k: round(v, 5) for k, v in m.items()}})
    return trials


def best_trial(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest accuracy + macro-F1; ties (small or saturated sets) go to the lower log-loss."""
    return max(trials, key=lambda t: (round(t["accuracy"] + t["macro_f1"], 6), -t["nll"]))


def kfold_ngram_choice(
    spec: HeadSpec,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    texts: Sequence[str],
    config: TrainConfig,
    epochs: int,
    *,
    progress: bool = True,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, Any]:
    """Choose the n-gram SVM's C and the fusion weight beta by k-fold out-of-fold scores.

    One validation split of a few hundred texts is a noisy judge of beta (R8: 549 texts, one
    text = 0.18 points). Here every training text (train + validation split) is scored once by a
    dense head (trained for the `epochs` that validation chose, no early stopping on the fold)
    and by an n-gram SVM for each C, both fitted on the other folds; (C, beta) maximise the
    out-of-fold accuracy + macro-F1 (ties: lower log-loss). `groups`: texts of one group (a message and
    a shorter form of it) share a fold.
    """
    folds = int(config.ngram["folds"])
    options = dict(config.ngram)
    Cs = [float(c) for c in options.get("Cs") or [options.get("C", 1.0)]]
    n_classes = len(spec.labels)
    y_np = y_all.numpy()
    if groups is None:
        fold = stratified_folds(y_np, n_classes, folds, config.seed)
    else:
        fold = stratified_group_folds(y_np, groups, n_classes, folds, config.seed)
    dense = np.zeros((len(y_np), n_classes))
    sparse = {C: np.zeros((len(y_np), n_classes)) for C in Cs}
    for f in tqdm(range(folds), desc=f"{folds}-fold beta", unit="fold", disable=not progress, dynamic_ncols=True):
        a, b = np.where(fold != f)[0], np.where(fold == f)[0]
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        r = fit_head(spec, x_all[ta], y_all[ta], x_all[tb], y_all[tb], config, progress=False, stop_after=epochs)
        with torch.no_grad():
            dense[b] = r.head(x_all[tb]).numpy()
        _, s_a, s_b = ngram_features(texts, y_np, a, b, n_classes, options)
        for C in Cs:
            coef, intercept = fit_svm(s_a, y_np[a], C, n_classes)
            sparse[C][b] = np.asarray(s_b @ coef.T + intercept)
    betas = tuple(options.get("betas", BETAS))
    trials = [{"C": C, **t} for C in Cs for t in beta_trials(dense, sparse[C], y_np.tolist(), betas, n_classes)]
    best = best_trial(trials)
    return {
        "C": best["C"],
        "beta": best["beta"],
        "folds": folds,
        "oof": {k: best[k] for k in ("accuracy", "macro_f1", "nll")},
        "trials": trials,
    }


def fit_ngram_part(
    head: Head,
    texts: Sequence[str],
    y: torch.Tensor,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    x_val: torch.Tensor,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Add the hashed n-gram linear part to a trained dense head (a product of experts).

    The SVM is fitted on the `train_idx` texts; beta is chosen on the validation split among
    ``options["betas"]``. The SVM weights times beta go into ``ngram_linear``, and the whole
    head is divided by one temperature chosen by validation log-loss.
    """
    n_classes = len(head.spec.labels)
    featurizer, s_train, s_val = ngram_features(texts, y.numpy(), train_idx, val_idx, n_classes, options)
    C = float(options.get("C", 1.0))
    coef, intercept = fit_svm(s_train, y[list(train_idx)].numpy(), C, n_classes)
    with torch.no_grad():
        dense_logits = head(x_val).numpy()
    sparse_scores = s_val @ coef.T + intercept
    y_val = y[list(val_idx)].tolist()
    trials = beta_trials(dense_logits, sparse_scores, y_val, options.get("betas", BETAS), n_classes)
    best = best_trial(trials)
    spec = featurizer.spec()
    spec.update({"C": C, "beta": best["beta"], "fusion": "dense logits + beta * linear SVM scores"})
    if options.get("folds"):
        spec["beta_rule"] = (
            f"C and beta by {int(options['folds'])}-fold out-of-fold accuracy + macro-F1 on all training data"
        )
    fused = torch.as_tensor(dense_logits + best["beta"] * sparse_scores, dtype=torch.float32)
    temperature, val_nll = _temperature(fused, torch.tensor(y_val), options)
    spec.update({"val_nll_calibrated": val_nll, "temperature": temperature})
    fresh = _fused_head(
        head, spec, featurizer, coef * best["beta"] / temperature, intercept * best["beta"] / temperature, temperature
    )
    return {
        "head": fresh,
        "C": spec["C"],
        "beta_trials": trials,
        "beta": best["beta"],
        "temperature": temperature,
        "val_nll_calibrated": spec["val_nll_calibrated"],
        "val": {k: best[k] for k in ("accuracy", "macro_f1", "nll")},
    }


def _temperature(fused: torch.Tensor, y_val: torch.Tensor, options: dict[str, Any]) -> tuple[float, float | None]:
    """(temperature, validation log-loss at it): one temperature over the fused logits, so that the
    reported scores mean something even when beta is large (the argmax does not change)."""
    if "temperature" in options:  # the refit: keep what the held-out validation chose
        return float(options["temperature"]), options.get("val_nll_calibrated")
    temperature = min(TEMPERATURES, key=lambda t: float(nn.functional.cross_entropy(fused / t, y_val)))
    return temperature, round(float(nn.functional.cross_entropy(fused / temperature, y_val)), 5)


def _fused_head(
    head: Head,
    ngram_spec: dict[str, Any],
    featurizer: NgramFeaturizer,
    weight: np.ndarray,
    bias: np.ndarray,
    temperature: float,
) -> Head:
    """A copy of `head` with the n-gram part (`weight`, `bias`) and its dense output divided by `temperature`."""
    fresh = Head(dataclasses.replace(head.spec, ngram=ngram_spec))
    fresh.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("ngram_")}, strict=False)
    fresh.set_ngram_buffers(featurizer)
    with torch.no_grad():
        fresh.net[-1].weight.div_(temperature)
        fresh.net[-1].bias.div_(temperature)
        fresh.ngram_linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        fresh.ngram_linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    fresh.eval()
    return fresh
