"""Training: task heads over a frozen shared encoder (mode "heads"), or a full fine-tune.

Mode ``heads``: the encoder is frozen; the pooled features of every hidden layer are computed
once per dataset and cached (see `pipelines.features`); a `Head` (standardisation + MLP or
linear layer over the chosen layers) is trained with a fixed seed on a stratified validation
split carved from the training data, with early stopping on validation macro-F1 and optional
class weights. The output directory holds ``model.safetensors`` and ``head.json`` (labels,
training config, metrics and learning curves).

Mode ``finetune``: see `finetune()`: the whole encoder plus one linear head per task, trained
jointly (multi-task when several datasets are given); writes a Hugging Face-loadable encoder
directory plus one head directory per task, loadable with ``Encoder(EncoderSettings(model_dir=...))``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipelines.datasets import Dataset, load, read_labelled_file
from pipelines.encoder import Encoder
from pipelines.features import cached_features, select_layers
from pipelines.heads import Head, HeadSpec, load_head, save_head


@dataclass
class TrainConfig:
    layers: list[int] = field(default_factory=lambda: [-1])
    hidden: int = 256  # 0: linear head
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 60
    patience: int = 8  # epochs without a better validation macro-F1 before stopping
    val_fraction: float = 0.1
    class_weights: str = "none"  # none | balanced | sqrt
    label_smoothing: float = 0.0
    ngram: dict[str, Any] = field(default_factory=dict)  # hashed n-gram part, see pipelines.ngrams
    refit: bool = False  # after choosing epochs (and beta) on validation, retrain on all training data
    seed: int = 13


# ---------------------------------------------------------------------------------------------
# data


def resolve_data(source: str, text_column: str = "text", label_column: str = "label", test_file: str | None = None) -> Dataset:
    """A built-in dataset name, or a CSV/JSONL/Parquet file (optionally with a test file)."""
    path = Path(source)
    if path.is_file():
        train = read_labelled_file(path, text_column, label_column)
        test = read_labelled_file(Path(test_file), text_column, label_column) if test_file else []
        labels = sorted({label for _, label in train})
        return Dataset(path.stem, train, test, labels)
    return load(source)


def stratified_val_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): `fraction` of every class (at least one when the class has 2+)."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for y in sorted(by_class):
        members = by_class[y][:]
        rng.shuffle(members)
        n_val = round(len(members) * fraction)
        if fraction > 0 and n_val == 0 and len(members) >= 2:
            n_val = 1
        val_idx.extend(members[:n_val])
        train_idx.extend(members[n_val:])
    return sorted(train_idx), sorted(val_idx)


# ---------------------------------------------------------------------------------------------
# metrics without sklearn (training must not need the eval extra)


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def summary_metrics(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> dict[str, float]:
    cm = confusion(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(axis=0), out=np.zeros(n_classes), where=cm.sum(axis=0) > 0)
    recall = np.divide(tp, cm.sum(axis=1), out=np.zeros(n_classes), where=cm.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n_classes), where=(precision + recall) > 0)
    present = cm.sum(axis=1) > 0
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# heads


def class_weight_vector(y: torch.Tensor, n_classes: int, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = torch.bincount(y, minlength=n_classes).float().clamp(min=1)
    w = counts.sum() / (n_classes * counts)
    if mode == "sqrt":
        w = w.sqrt()
    elif mode != "balanced":
        raise ValueError(f"class_weights must be none, balanced or sqrt, not {mode!r}")
    return w / w.mean()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class FitResult:
    head: Head
    history: dict[str, list[float]]
    best_epoch: int
    val_metrics: dict[str, float]
    seconds: float


def fit_head(
    spec: HeadSpec,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    config: TrainConfig,
    *,
    progress: bool = True,
    stop_after: int | None = None,
) -> FitResult:
    """Train the dense part of a Head on inputs [n, in_dim] (already layer-concatenated).

    Early stopping: the state with the best validation macro-F1 is kept (ties: lower val loss).
    `stop_after`: run exactly this many epochs (same learning-rate schedule) and keep the last
    state: the refit on all training data once validation has chosen the epoch count.
    """
    _seed_all(config.seed)
    t0 = time.time()
    head = Head(dataclasses.replace(spec, ngram={}))  # the dense part; its own spec object
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0).clamp(min=1e-4)
    head.mean.copy_(mean)
    head.std.copy_(std)
    n_classes = len(spec.labels)
    weights = class_weight_vector(y_train, n_classes, config.class_weights)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss(weight=weights)
    dense_params = [p for n, p in head.named_parameters() if not n.startswith("ngram_linear")]
    groups = [{"params": dense_params, "lr": config.lr, "weight_decay": config.weight_decay}]
    optim = torch.optim.AdamW(groups)
    total_steps = config.max_epochs * math.ceil(len(y_train) / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=[g["lr"] for g in groups], total_steps=max(total_steps, 1), pct_start=0.1, anneal_strategy="cos")
    history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_loss": [], "val_accuracy": [], "val_macro_f1": []}
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state: dict[str, torch.Tensor] = {}
    best_epoch = 0
    stale = 0
    gen = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(1, config.max_epochs + 1), desc=f"train {spec.name}", unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        head.train()
        perm = torch.randperm(len(y_train), generator=gen)
        running, seen = 0.0, 0
        for start in range(0, len(perm), config.batch_size):
            idx = perm[start : start + config.batch_size]
            xb = x_train[idx]
            logits = head(xb)
            loss = loss_fn(logits, y_train[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
        head.eval()
        with torch.no_grad():
            logits = head(x_val)
            vloss = float(val_loss_fn(logits, y_val))
            m = summary_metrics(y_val.tolist(), logits.argmax(dim=1).tolist(), n_classes)
        history["epoch"].append(epoch)
        history["train_loss"].append(round(running / max(seen, 1), 5))
        history["val_loss"].append(round(vloss, 5))
        history["val_accuracy"].append(round(m["accuracy"], 5))
        history["val_macro_f1"].append(round(m["macro_f1"], 5))
        bar.set_postfix(loss=f"{running / max(seen, 1):.3f}", val_f1=f"{m['macro_f1']:.4f}", best=best_epoch)
        if stop_after is not None:
            if epoch >= stop_after:
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                best_epoch = epoch
                break
            continue
        if (m["macro_f1"], -vloss) > (best[0], -best[1]):
            best = (m["macro_f1"], vloss)
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            best_epoch = epoch
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    head.load_state_dict(best_state)
    head.eval()
    i = best_epoch - 1
    val_metrics = {"accuracy": history["val_accuracy"][i], "macro_f1": history["val_macro_f1"][i], "loss": history["val_loss"][i]}
    return FitResult(head, history, best_epoch, val_metrics, time.time() - t0)


NON_FEATURIZER_OPTIONS = ("C", "Cs", "betas", "temperature", "val_nll_calibrated", "folds")
BETAS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def _svm_scores(s_train: Any, y_train: np.ndarray, s_eval: Any, C: float, n_classes: int) -> np.ndarray:
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=C).fit(s_train, y_train)
    coef, intercept = svm.coef_, svm.intercept_
    if n_classes == 2:
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return np.asarray(s_eval @ coef.T + intercept)


def kfold_ngram_choice(
    spec: HeadSpec,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    texts: Sequence[str],
    config: TrainConfig,
    epochs: int,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Choose the n-gram SVM's C and the fusion weight beta by k-fold out-of-fold scores.

    One validation split of a few hundred texts is a noisy judge of beta (R8: 549 texts, one
    text = 0.18 points). Here every training text (train + validation split) is scored once by a
    dense head (trained for the `epochs` that validation chose, no early stopping on the fold)
    and by an n-gram SVM for each C, both fitted on the other folds; (C, beta) maximise the
    out-of-fold accuracy + macro-F1 (ties: lower log-loss).
    """
    from pipelines.ngrams import NgramFeaturizer

    folds = int(config.ngram["folds"])
    options = dict(config.ngram)
    Cs = [float(c) for c in options.get("Cs") or [options.get("C", 1.0)]]
    betas = tuple(options.get("betas", BETAS))
    fit_options = {k: v for k, v in options.items() if k not in NON_FEATURIZER_OPTIONS}
    n_classes = len(spec.labels)
    y_np = y_all.numpy()
    rng = np.random.RandomState(config.seed)
    fold = np.zeros(len(y_np), dtype=np.int64)
    for c in range(n_classes):
        members = np.where(y_np == c)[0]
        rng.shuffle(members)
        fold[members] = np.arange(len(members)) % folds
    dense = np.zeros((len(y_np), n_classes))
    sparse = {C: np.zeros((len(y_np), n_classes)) for C in Cs}
    for f in tqdm(range(folds), desc=f"{folds}-fold beta", unit="fold", disable=not progress, dynamic_ncols=True):
        a, b = np.where(fold != f)[0], np.where(fold == f)[0]
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        r = fit_head(spec, x_all[ta], y_all[ta], x_all[tb], y_all[tb], config, progress=False, stop_after=epochs)
        with torch.no_grad():
            dense[b] = r.head(x_all[tb]).numpy()
        featurizer = NgramFeaturizer.fit([texts[i] for i in a], y_np[a].tolist(), n_classes, **fit_options)
        s_a = _to_scipy(featurizer.transform([texts[i] for i in a]))
        s_b = _to_scipy(featurizer.transform([texts[i] for i in b]))
        for C in Cs:
            sparse[C][b] = _svm_scores(s_a, y_np[a], s_b, C, n_classes)
    trials = []
    y_t = torch.as_tensor(y_np)
    for C in Cs:
        for beta in betas:
            fused = torch.as_tensor(dense + beta * sparse[C], dtype=torch.float32)
            m = summary_metrics(y_np.tolist(), fused.argmax(dim=1).tolist(), n_classes)
            nll = float(nn.functional.cross_entropy(fused, y_t))
            trials.append({"C": C, "beta": beta, "nll": round(nll, 5), **{k: round(v, 5) for k, v in m.items()}})
    best = max(trials, key=lambda t: (round(t["accuracy"] + t["macro_f1"], 6), -t["nll"]))
    return {"C": best["C"], "beta": best["beta"], "folds": folds, "oof": {k: best[k] for k in ("accuracy", "macro_f1", "nll")}, "trials": trials}


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

    A linear SVM (scikit-learn's LinearSVC, squared hinge) is fitted on hashed TF-IDF 1-2-grams
    of the training split; its scores are added to the dense head's logits with a weight `beta`
    chosen on the validation split (mean of accuracy and macro-F1). The SVM weights times beta go
    into ``ngram_linear``. Needs scikit-learn at training time only; inference needs none.
    """
    from sklearn.svm import LinearSVC

    from pipelines.ngrams import NgramFeaturizer

    n_classes = len(head.spec.labels)
    fit_options = {k: v for k, v in options.items() if k not in NON_FEATURIZER_OPTIONS}
    train_texts = [texts[i] for i in train_idx]
    featurizer = NgramFeaturizer.fit(train_texts, y[list(train_idx)].tolist(), n_classes, **fit_options)
    s_train = _to_scipy(featurizer.transform(train_texts))
    s_val = _to_scipy(featurizer.transform([texts[i] for i in val_idx]))
    svm = LinearSVC(C=float(options.get("C", 1.0)))
    svm.fit(s_train, y[list(train_idx)].numpy())
    coef, intercept = svm.coef_, svm.intercept_
    if n_classes == 2:  # binary LinearSVC: one score for class 1; as two logits (-s/2, +s/2)
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    with torch.no_grad():
        dense_logits = head(x_val).numpy()
    sparse_scores = s_val @ coef.T + intercept
    y_val = y[list(val_idx)].tolist()
    trials = []
    y_val_t = torch.tensor(y_val)
    for beta in options.get("betas", BETAS):
        fused = torch.as_tensor(dense_logits + beta * sparse_scores, dtype=torch.float32)
        m = summary_metrics(y_val, fused.argmax(dim=1).tolist(), n_classes)
        nll = float(nn.functional.cross_entropy(fused, y_val_t))
        trials.append({"beta": beta, "nll": round(nll, 5), **{k: round(v, 5) for k, v in m.items()}})
    # Choose beta by validation accuracy + macro-F1; ties (small or saturated validation sets)
    # go to the lower log-loss of the fused probabilities.
    best = max(trials, key=lambda t: (round(t["accuracy"] + t["macro_f1"], 6), -t["nll"]))
    spec = featurizer.spec()
    spec.update({"C": float(options.get("C", 1.0)), "beta": best["beta"], "fusion": "dense logits + beta * linear SVM scores"})
    if options.get("folds"):
        spec["beta_rule"] = f"C and beta by {int(options['folds'])}-fold out-of-fold accuracy + macro-F1 on all training data"
    # Calibrate: one temperature over the fused logits (argmax unchanged) chosen by val log-loss,
    # so that the reported scores mean something even when beta is large.
    fused = torch.as_tensor(dense_logits + best["beta"] * sparse_scores, dtype=torch.float32)
    temps = [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0]  # only ever softens
    if "temperature" in options:  # the refit: keep what the held-out validation chose
        temperature = float(options["temperature"])
        spec["val_nll_calibrated"] = options.get("val_nll_calibrated")
    else:
        temperature = min(temps, key=lambda t: float(nn.functional.cross_entropy(fused / t, y_val_t)))
        spec["val_nll_calibrated"] = round(float(nn.functional.cross_entropy(fused / temperature, y_val_t)), 5)
    spec["temperature"] = temperature
    fresh = Head(dataclasses.replace(head.spec, ngram=spec))
    fresh.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("ngram_")}, strict=False)
    fresh.set_ngram_buffers(featurizer)
    with torch.no_grad():
        fresh.net[-1].weight.div_(temperature)
        fresh.net[-1].bias.div_(temperature)
        fresh.ngram_linear.weight.copy_(torch.as_tensor(coef * best["beta"] / temperature, dtype=torch.float32))
        fresh.ngram_linear.bias.copy_(torch.as_tensor(intercept * best["beta"] / temperature, dtype=torch.float32))
    fresh.eval()
    return {"head": fresh, "C": spec["C"], "beta_trials": trials, "beta": best["beta"], "temperature": temperature, "val_nll_calibrated": spec["val_nll_calibrated"], "val": {k: best[k] for k in ("accuracy", "macro_f1", "nll")}}


def _to_scipy(x: torch.Tensor) -> Any:
    import scipy.sparse as sp

    x = x.coalesce()
    i = x.indices().numpy()
    return sp.csr_matrix((x.values().numpy(), (i[0], i[1])), shape=tuple(x.shape))


def train_heads(
    encoder: Encoder,
    data: Dataset,
    out_dir: Path,
    config: TrainConfig,
    *,
    name: str | None = None,
    progress: bool = True,
    use_cache: bool = True,
    command: str | None = None,
    half: bool = False,
) -> Head:
    """Mode "heads": features from the frozen encoder (cached), a Head trained and saved."""
    name = name or Path(out_dir).name
    label_index = {label: i for i, label in enumerate(data.labels)}
    texts = [t for t, _ in data.train]
    y_all = torch.tensor([label_index[label] for _, label in data.train])
    feats = cached_features(encoder, texts, tag=f"{data.name}-train", progress=progress, use_cache=use_cache)
    x_all = _concat(feats, config.layers, encoder.num_layers)
    train_idx, val_idx = stratified_val_split(y_all.tolist(), config.val_fraction, config.seed)
    tr, va = torch.tensor(train_idx), torch.tensor(val_idx)
    spec = HeadSpec(
        name=name,
        labels=list(data.labels),
        input_dim=encoder.hidden_size,
        layers=list(config.layers),
        hidden=config.hidden,
        dropout=config.dropout,
        encoder={"name": encoder.name, "version": encoder.version, **_settings_dict(encoder)},
    )
    result = fit_head(spec, x_all[tr], y_all[tr], x_all[va], y_all[va], config, progress=progress)
    head = result.head
    ngram_info: dict[str, Any] = {}
    kfold: dict[str, Any] = {}
    if config.ngram:
        options = dict(config.ngram)
        if options.get("folds"):  # (C, beta) from k-fold out-of-fold scores; temperature still on val
            kfold = kfold_ngram_choice(spec, x_all, y_all, texts, config, result.best_epoch, progress=progress)
            options.update({"C": kfold["C"], "betas": (kfold["beta"],)})
        ngram_info = fit_ngram_part(head, texts, y_all, train_idx, val_idx, x_all[va], options)
        head = ngram_info.pop("head")
    if config.refit:
        everything = list(range(len(texts)))
        refit = fit_head(spec, x_all, y_all, x_all[va], y_all[va], config, progress=progress, stop_after=result.best_epoch)
        head = refit.head
        if config.ngram:
            options = {**config.ngram, "C": ngram_info["C"], "betas": (ngram_info["beta"],), "temperature": ngram_info["temperature"],
                       "val_nll_calibrated": ngram_info["val_nll_calibrated"]}
            head = fit_ngram_part(head, texts, y_all, everything, val_idx, x_all[va], options)["head"]
    metrics: dict[str, Any] = {
        "best_epoch": result.best_epoch,
        "val": result.val_metrics,
        "curves": result.history,
        "train_seconds": round(result.seconds, 1),
    }
    if ngram_info:
        metrics["val_dense_only"] = metrics["val"]
        metrics["val"] = {**ngram_info["val"], "loss": None}
        metrics["ngram"] = {"beta": ngram_info["beta"], "temperature": ngram_info["temperature"], "beta_trials": ngram_info["beta_trials"]}
        if kfold:
            metrics["ngram"]["kfold"] = kfold
    if data.test:
        test_texts = [t for t, _ in data.test]
        y_test = [label_index.get(label, -1) for _, label in data.test]
        tfeats = cached_features(encoder, test_texts, tag=f"{data.name}-test", progress=progress, use_cache=use_cache)
        with torch.no_grad():
            pred = head.predict_features(select_layers(tfeats, head.spec.layers, encoder.num_layers), test_texts).argmax(dim=1).tolist()
        keep = [i for i, y in enumerate(y_test) if y >= 0]
        metrics["test"] = summary_metrics([y_test[i] for i in keep], [pred[i] for i in keep], len(data.labels))
    head.spec.training = {
        "mode": "heads",
        "dataset": data.name,
        "dataset_fingerprint": data.fingerprint,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": len(data.test),
        "config": asdict(config),
        "command": command or "",
    }
    head.spec.metrics = metrics
    save_head(head, Path(out_dir), half=half)
    if half:  # the metrics above must describe the stored (rounded) weights
        head, _ = load_head(Path(out_dir))
        if data.test:
            with torch.no_grad():
                pred = head.predict_features(select_layers(tfeats, head.spec.layers, encoder.num_layers), test_texts).argmax(dim=1).tolist()
            head.spec.metrics["test"] = summary_metrics([y_test[i] for i in keep], [pred[i] for i in keep], len(data.labels))
            save_head(head, Path(out_dir), half=True)
    return head


def _concat(all_feats: torch.Tensor, layers: Sequence[int], num_layers: int) -> torch.Tensor:
    pooled = select_layers(all_feats, layers, num_layers)
    return torch.cat([pooled[layer] for layer in layers], dim=1)


def _settings_dict(encoder: Encoder) -> dict[str, Any]:
    s = encoder.settings
    return {"window_tokens": s.window_tokens, "stride_tokens": s.stride_tokens, "max_windows": s.max_windows, "precision": encoder.precision}


def command_line() -> str:
    return "bertstream " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# ---------------------------------------------------------------------------------------------
# mode "finetune": the whole encoder, optionally multi-task


def finetune(
    datasets_: list[Dataset],
    out_dir: Path,
    *,
    model_dir: Path | None = None,
    model: Any = None,
    tokenizer: Any = None,
    task_names: list[str] | None = None,
    epochs: int = 3,
    lr: float = 5e-5,
    head_lr: float = 1e-3,
    batch_size: int = 32,
    window: int = 256,
    seed: int = 13,
    val_fraction: float = 0.1,
    patience: int = 1,
    max_train: int | None = None,
    command: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the whole encoder with one linear head per dataset (multi-task when several).

    Texts are cut to their first `window` tokens for training (inference still reads windows);
    batches alternate between tasks in proportion to their size; after each epoch every task's
    validation macro-F1 is measured and the state with the best mean is kept (early stopping
    after `patience` epochs without improvement). Writes ``out_dir`` as a Hugging Face
    directory (config, safetensors, tokenizer) plus ``out_dir/heads/<task>/``, heads that load
    with `Classifier.load(Encoder(EncoderSettings(model_dir=out_dir)), [out_dir/heads/<task>])`.
    """
    from transformers import AutoModel, AutoTokenizer

    from pipelines.registry import default_model_dir, file_digest

    _seed_all(seed)
    t0 = time.time()
    if model is None or tokenizer is None:
        source = Path(model_dir) if model_dir else default_model_dir()
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModel.from_pretrained(source, local_files_only=True, use_safetensors=True)
        base_name = str(source)
    else:
        base_name = "in-memory"
    names = task_names or [d.name for d in datasets_]
    hidden = model.config.hidden_size
    tasks = []
    for name, data in zip(names, datasets_):
        index = {label: i for i, label in enumerate(data.labels)}
        y = [index[label] for _, label in data.train]
        tr, va = stratified_val_split(y, val_fraction, seed)
        if max_train:
            tr = sorted(random.Random(seed).sample(tr, min(max_train, len(tr))))
        tasks.append({"name": name, "data": data, "y": y, "train": tr, "val": va, "linear": nn.Linear(hidden, len(data.labels))})
    linears = nn.ModuleList([t["linear"] for t in tasks])
    optim = torch.optim.AdamW([{"params": model.parameters(), "lr": lr}, {"params": linears.parameters(), "lr": head_lr}], weight_decay=0.01)
    steps_per_epoch = sum(math.ceil(len(t["train"]) / batch_size) for t in tasks)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=[lr, head_lr], total_steps=max(steps_per_epoch * epochs, 1), pct_start=0.1)

    def pooled(texts: list[str]) -> torch.Tensor:
        enc = tokenizer(texts, truncation=True, max_length=window, padding=True, return_tensors="pt")
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        m = enc["attention_mask"].unsqueeze(-1).float()
        return (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1)

    def validate() -> dict[str, dict[str, float]]:
        model.eval()
        result = {}
        with torch.no_grad():
            for t in tasks:
                preds = []
                for s in range(0, len(t["val"]), batch_size * 2):
                    idx = t["val"][s : s + batch_size * 2]
                    preds += t["linear"](pooled([t["data"].train[i][0] for i in idx])).argmax(1).tolist()
                result[t["name"]] = summary_metrics([t["y"][i] for i in t["val"]], preds, len(t["data"].labels))
        return result

    rng = random.Random(seed)
    history: dict[str, list] = {"epoch": [], "train_loss": [], "val_macro_f1": []}
    best_score, best_state, best_epoch, stale = -1.0, None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        schedule = []
        for k, t in enumerate(tasks):
            order = t["train"][:]
            rng.shuffle(order)
            schedule += [(k, order[s : s + batch_size]) for s in range(0, len(order), batch_size)]
        rng.shuffle(schedule)
        running = 0.0
        bar = tqdm(schedule, desc=f"finetune epoch {epoch}/{epochs}", unit="batch", disable=not progress, dynamic_ncols=True)
        for k, idx in bar:
            t = tasks[k]
            logits = t["linear"](pooled([t["data"].train[i][0] for i in idx]))
            loss = nn.functional.cross_entropy(logits, torch.tensor([t["y"][i] for i in idx]))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(linears.parameters()), 1.0)
            optim.step()
            sched.step()
            running += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        val = validate()
        score = float(np.mean([v["macro_f1"] for v in val.values()]))
        history["epoch"].append(epoch)
        history["train_loss"].append(round(running / max(len(schedule), 1), 5))
        history["val_macro_f1"].append({n: round(v["macro_f1"], 5) for n, v in val.items()})
        if score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = ({k: v.detach().clone() for k, v in model.state_dict().items()}, {k: v.detach().clone() for k, v in linears.state_dict().items()})
        else:
            stale += 1
            if stale >= patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state[0])
    linears.load_state_dict(best_state[1])
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    for stray in list(out_dir.glob("*.bin")) + list(out_dir.glob("*.pt")):
        stray.unlink()
    version = file_digest(sorted(out_dir.glob("*.safetensors")))
    info = {"base": base_name, "tasks": names, "epochs_run": len(history["epoch"]), "best_epoch": best_epoch, "window": window,
            "lr": lr, "head_lr": head_lr, "batch_size": batch_size, "seed": seed, "val_fraction": val_fraction, "max_train": max_train,
            "history": history, "seconds": round(time.time() - t0, 1), "command": command}
    for t in tasks:
        spec = HeadSpec(name=t["name"], labels=list(t["data"].labels), input_dim=hidden, layers=[-1], hidden=0, dropout=0.0,
                        encoder={"name": out_dir.name, "version": version, "train_window_tokens": window})
        head = Head(spec)
        with torch.no_grad():
            head.net[-1].weight.copy_(t["linear"].weight)
            head.net[-1].bias.copy_(t["linear"].bias)
        spec.training = {"mode": "finetune", "dataset": t["data"].name, "dataset_fingerprint": t["data"].fingerprint, **{k: v for k, v in info.items() if k != "history"}}
        spec.metrics = {"best_epoch": best_epoch, "val": {"macro_f1": history["val_macro_f1"][best_epoch - 1][t["name"]]},
                        "curves": {"epoch": history["epoch"], "train_loss": history["train_loss"],
                                   "val_macro_f1": [v[t["name"]] for v in history["val_macro_f1"]]}}
        save_head(head, out_dir / "heads" / t["name"])
    (out_dir / "bertstream_finetune.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
