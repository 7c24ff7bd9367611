"""The dense part of a head (standardisation + MLP or linear layer), trained on cached features."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipelines.heads import Head, HeadSpec
from pipelines.training.config import TrainConfig
from pipelines.training.metrics import summary_metrics


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    seed_all(config.seed)
    t0 = time.time()
    head = _standardised_head(spec, x_train)
    n_classes = len(spec.labels)
    weights = class_weight_vector(y_train, n_classes, config.class_weights)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss(weight=weights)
    optim, sched = _optimiser(head, config, len(y_train))
    history: dict[str, list[float]] = {
        "epoch": [],
        "train_loss": [],
        "val_loss": [],
        "val_accuracy": [],
        "val_macro_f1": [],
    }
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state: dict[str, torch.Tensor] = {}
    best_epoch = 0
    stale = 0
    gen = torch.Generator().manual_seed(config.seed)
    bar = tqdm(
        range(1, config.max_epochs + 1),
        desc=f"train {spec.name}",
        unit="epoch",
        disable=not progress,
        dynamic_ncols=True,
    )
    for epoch in bar:
        train_loss = _train_epoch(
            head,
            x_train,
            y_train,
            loss_fn,
            optim,
            sched,
            torch.randperm(len(y_train), generator=gen),
            config.batch_size,
        )
        vloss, m = _validate(head, x_val, y_val, val_loss_fn, n_classes)
        history["epoch"].append(epoch)
        history["train_loss"].append(round(train_loss, 5))
        history["val_loss"].append(round(vloss, 5))
        history["val_accuracy"].append(round(m["accuracy"], 5))
        history["val_macro_f1"].append(round(m["macro_f1"], 5))
        bar.set_postfix(loss=f"{train_loss:.3f}", val_f1=f"{m['macro_f1']:.4f}", best=best_epoch)
        if stop_after is not None:
            if epoch >= stop_after:
                best_state, best_epoch = _snapshot(head), epoch
                break
            continue
        if (m["macro_f1"], -vloss) > (best[0], -best[1]):
            best = (m["macro_f1"], vloss)
            best_state, best_epoch, stale = _snapshot(head), epoch, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    head.load_state_dict(best_state)
    head.eval()
    i = best_epoch - 1
    val_metrics = {
        "accuracy": history["val_accuracy"][i],
        "macro_f1": history["val_macro_f1"][i],
        "loss": history["val_loss"][i],
    }
    return FitResult(head, history, best_epoch, val_metrics, time.time() - t0)


def _standardised_head(spec: HeadSpec, x_train: torch.Tensor) -> Head:
    head = Head(dataclasses.replace(spec, ngram={}))  # the dense part; its own spec object
    head.mean.copy_(x_train.mean(dim=0))
    head.std.copy_(x_train.std(dim=0).clamp(min=1e-4))
    return head


def _optimiser(head: Head, config: TrainConfig, n_train: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the dense parameters with a one-cycle cosine schedule over all epochs."""
    dense_params = [p for n, p in head.named_parameters() if not n.startswith("ngram_linear")]
    groups = [{"params": dense_params, "lr": config.lr, "weight_decay": config.weight_decay}]
    optim = torch.optim.AdamW(groups)
    total_steps = config.max_epochs * math.ceil(n_train / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        optim, max_lr=[g["lr"] for g in groups], total_steps=max(total_steps, 1), pct_start=0.1, anneal_strategy="cos"
    )
    return optim, sched


def _train_epoch(
    head: Head,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module,
    optim: torch.optim.Optimizer,
    sched: Any,
    perm: torch.Tensor,
    batch_size: int,
) -> float:
    """One pass over `perm` in batches; the mean training loss."""
    head.train()
    running, seen = 0.0, 0
    for start in range(0, len(perm), batch_size):
        idx = perm[start : start + batch_size]
        loss = loss_fn(head(x[idx]), y[idx])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        running += float(loss.detach()) * len(idx)
        seen += len(idx)
    return running / max(seen, 1)


def _validate(
    head: Head, x_val: torch.Tensor, y_val: torch.Tensor, loss_fn: nn.Module, n_classes: int
) -> tuple[float, dict[str, float]]:
    head.eval()
    with torch.no_grad():
        logits = head(x_val)
        return float(loss_fn(logits, y_val)), summary_metrics(y_val.tolist(), logits.argmax(dim=1).tolist(), n_classes)


def _snapshot(head: Head) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in head.state_dict().items()}
