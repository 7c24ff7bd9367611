"""The settings of a head's training run (mode "heads"), stored in its ``head.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
