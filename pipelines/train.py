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

import json
import math
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipelines.datasets import Dataset, Example, load, read_labelled_file
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
        n_val = int(round(len(members) * fraction))
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
    sparse_train: Any = None,
    sparse_val: Any = None,
    progress: bool = True,
) -> FitResult:
    """Train a Head on dense inputs [n, in_dim] (already layer-concatenated).

    `sparse_train`/`sparse_val`: optional torch sparse CSR inputs for the hashed n-gram part.
    Early stopping: the state with the best validation macro-F1 is kept (ties: lower val loss).
    """
    _seed_all(config.seed)
    t0 = time.time()
    head = Head(spec)
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
    if head.ngram_linear is not None:
        groups.append({"params": list(head.ngram_linear.parameters()), "lr": float(config.ngram.get("lr", config.lr)),
                       "weight_decay": float(config.ngram.get("weight_decay", config.weight_decay))})
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
            logits = head(xb, _sparse_rows(sparse_train, idx)) if sparse_train is not None else head(xb)
            loss = loss_fn(logits, y_train[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
        head.eval()
        with torch.no_grad():
            logits = head(x_val, sparse_val) if sparse_val is not None else head(x_val)
            vloss = float(val_loss_fn(logits, y_val))
            m = summary_metrics(y_val.tolist(), logits.argmax(dim=1).tolist(), n_classes)
        history["epoch"].append(epoch)
        history["train_loss"].append(round(running / max(seen, 1), 5))
        history["val_loss"].append(round(vloss, 5))
        history["val_accuracy"].append(round(m["accuracy"], 5))
        history["val_macro_f1"].append(round(m["macro_f1"], 5))
        bar.set_postfix(loss=f"{running / max(seen, 1):.3f}", val_f1=f"{m['macro_f1']:.4f}", best=best_epoch)
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


def _sparse_rows(matrix: Any, idx: torch.Tensor) -> Any:
    return matrix.index_select(0, idx)


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
    sparse_train = sparse_val = None
    if config.ngram:
        from pipelines.ngrams import NgramFeaturizer

        options = {k: v for k, v in config.ngram.items() if k not in ("lr", "weight_decay")}
        featurizer = NgramFeaturizer.fit([texts[i] for i in train_idx], y_all[tr].tolist(), len(data.labels), **options)
        spec.ngram = featurizer.spec()
        sparse = featurizer.transform(texts)
        sparse_train, sparse_val = sparse.index_select(0, tr), sparse.index_select(0, va)
    result = fit_head(spec, x_all[tr], y_all[tr], x_all[va], y_all[va], config, sparse_train=sparse_train, sparse_val=sparse_val, progress=progress)
    head = result.head
    if config.ngram:
        head.set_ngram_buffers(featurizer)
    metrics: dict[str, Any] = {
        "best_epoch": result.best_epoch,
        "val": result.val_metrics,
        "curves": result.history,
        "train_seconds": round(result.seconds, 1),
    }
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
