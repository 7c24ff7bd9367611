"""Sentiment head over the frozen encoder, trained on other targets than the hard label.

The label is the class of a mean rating, so the data also holds the mean itself and each text's
individual ratings. Tried, with the default head's inputs (layers 3-6 of the cached features)
and MLP (512, dropout 0.3, AdamW lr 3e-4, wd 0.05, OneCycle, early stopping on val macro-F1):
- ce:   cross-entropy on the hard label (the default head's dense part);
- reg:  regression on the mean rating (smooth L1), classes by the +-0.5 thresholds, and by
        thresholds chosen on val;
- soft: soft labels, P(class) of the panel mean under its standard error (tau scales it);
- both: cross-entropy plus the mean-rating regression as a second output.
Each classifier also gets a neutral-logit offset chosen on val for macro-F1.

Run: `.venv/bin/python docs/experiments/vader_targets.py ce reg soft soft0.5 both`
(needs `bertstream data vader`; encodes the set once into the feature cache).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch import nn

from pipelines.encoder import Encoder, EncoderSettings
from pipelines.training.datasets import load, vader_corpora, vader_ratings
from pipelines.training.features import cached_features
from pipelines.training.metrics import summary_metrics
from pipelines.training.splits import stratified_split

LAYERS = (3, 4, 5, 6)
data = load("vader")
encoder = Encoder(EncoderSettings())
index = {label: i for i, label in enumerate(data.labels)}
means = {text: mean for rows in vader_corpora().values() for text, mean in reversed(rows)}
ratings = vader_ratings()


def features(split: str) -> torch.Tensor:
    f = cached_features(encoder, [t for t, _ in getattr(data, split)], tag=f"vader-{split}", progress=False)
    return torch.cat([f[:, layer, :] for layer in LAYERS], dim=1)


def soft_labels(texts: list[str], tau: float) -> torch.Tensor:
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    out = []
    for text in texts:
        r = np.asarray(ratings.get(text, [means[text]] * 2), dtype=float)
        se = max(r.std(ddof=1) / math.sqrt(len(r)) * tau, 1e-3)
        neg, pos = phi((-0.5 - means[text]) / se), 1 - phi((0.5 - means[text]) / se)
        out.append([neg, max(0.0, 1 - neg - pos), pos])
    return torch.tensor(out)


train_texts = [t for t, _ in data.train]
x_all, x_test = features("train"), features("test")
y_all = torch.tensor([index[label] for _, label in data.train])
y_test = torch.tensor([index[label] for _, label in data.test])
mean_all = torch.tensor([means[t] for t in train_texts])
tr, va = (torch.tensor(i) for i in stratified_split(y_all.tolist(), 0.1, 13))
mu, sd = x_all[tr].mean(0), x_all[tr].std(0).clamp(min=1e-4)
norm = lambda x: (x - mu) / sd  # noqa: E731


def decide(kind: str, out: torch.Tensor, lo: float = -0.5, hi: float = 0.5) -> torch.Tensor:
    if kind == "reg":
        return (out[:, 0] > lo).long() + (out[:, 0] >= hi).long()
    return out[:, :3].argmax(1)


def loss_of(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "ce":
        return nn.functional.cross_entropy(out, target)
    if kind == "soft":
        return -(target * out.log_softmax(1)).sum(1).mean()
    if kind == "reg":
        return nn.functional.smooth_l1_loss(out[:, 0], target)
    return nn.functional.cross_entropy(out[:, :3], target[:, 0].long()) + 0.5 * nn.functional.smooth_l1_loss(
        out[:, 3], target[:, 1]
    )


def train(
    kind: str, target: torch.Tensor, epochs: int = 40, patience: int = 8, seed: int = 13
) -> tuple[nn.Module, int]:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(x_all.shape[1], 512), nn.GELU(), nn.Dropout(0.3), nn.Linear(512, {"reg": 1, "both": 4}.get(kind, 3))
    )
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-4, total_steps=epochs * math.ceil(len(tr) / 64), pct_start=0.1
    )
    gen = torch.Generator().manual_seed(seed)
    xs, best, stale = norm(x_all[tr]), (-1.0, {}, 0), 0
    for epoch in range(1, epochs + 1):
        net.train()
        perm = torch.randperm(len(tr), generator=gen)
        for start in range(0, len(perm), 64):
            i = perm[start : start + 64]
            loss = loss_of(kind, net(xs[i]), target[tr][i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            f1 = summary_metrics(y_all[va].tolist(), decide(kind, net(norm(x_all[va]))).tolist(), 3)["macro_f1"]
        if f1 > best[0]:
            best, stale = (f1, {k: v.clone() for k, v in net.state_dict().items()}, epoch), 0
        elif (stale := stale + 1) >= patience:
            break
    net.load_state_dict(best[1])
    return net.eval(), best[2]


def report(name: str, pred_val: torch.Tensor, pred_test: torch.Tensor) -> None:
    v = summary_metrics(y_all[va].tolist(), pred_val.tolist(), 3)
    t = summary_metrics(y_test.tolist(), pred_test.tolist(), 3)
    print(
        f"{name:36s} val acc {v['accuracy']:.4f} macro-F1 {v['macro_f1']:.4f} | test acc {t['accuracy']:.4f} macro-F1 {t['macro_f1']:.4f}",
        flush=True,
    )


def val_f1(pred: torch.Tensor) -> float:
    return summary_metrics(y_all[va].tolist(), pred.tolist(), 3)["macro_f1"]


for arg in sys.argv[1:] or ["ce"]:
    kind = "soft" if arg.startswith("soft") else arg
    target = {
        "ce": lambda: y_all,
        "reg": lambda: mean_all,
        "both": lambda: torch.stack([y_all.float(), mean_all], 1),
        "soft": lambda: soft_labels(train_texts, float(arg[4:] or 1)),  # noqa: B023 - called at once
    }[kind]()
    net, epoch = train(kind, target)
    with torch.no_grad():
        out_val, out_test = net(norm(x_all[va])), net(norm(x_test))
    report(f"{arg} (epoch {epoch})", decide(kind, out_val), decide(kind, out_test))
    if kind == "reg":
        grid = [(lo, hi) for lo in np.arange(-0.9, -0.09, 0.05) for hi in np.arange(0.1, 0.91, 0.05)]
        lo, hi = max(grid, key=lambda g: val_f1(decide("reg", out_val, *g)))
        report(
            f"  thresholds {lo:.2f} / {hi:.2f} (val)", decide("reg", out_val, lo, hi), decide("reg", out_test, lo, hi)
        )
    else:
        shift = lambda o, b: o[:, :3] + torch.tensor([0.0, b, 0.0])  # noqa: E731
        b = max(np.arange(-1.0, 2.01, 0.05), key=lambda b: val_f1(shift(out_val, b).argmax(1)))
        report(f"  neutral offset {b:+.2f} (val)", shift(out_val, b).argmax(1), shift(out_test, b).argmax(1))
