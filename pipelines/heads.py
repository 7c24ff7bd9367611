"""Task heads: small classifiers over pooled encoder features, stored as safetensors + JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipelines.registry import ModelNotFoundError, file_digest

WEIGHTS = "model.safetensors"
CONFIG = "head.json"


@dataclass
class HeadSpec:
    name: str
    labels: list[str]
    input_dim: int  # hidden size of the encoder
    layers: list[int] = field(default_factory=lambda: [-1])  # pooled layers, concatenated
    hidden: int = 256  # 0: a linear head
    dropout: float = 0.1
    encoder: dict[str, str] = field(default_factory=dict)  # name and version it was trained on
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Optional hashed n-gram linear part (see pipelines.ngrams): {} in dense-only heads and in
    # head.json files written before it existed, which therefore load unchanged.
    ngram: dict[str, Any] = field(default_factory=dict)


class Head(nn.Module):
    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        self.spec = spec
        in_dim = spec.input_dim * len(spec.layers)
        # Per-feature standardisation learnt from the training set (pooled features are not centred).
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        if spec.hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_dim, spec.hidden),
                nn.GELU(),
                nn.Dropout(spec.dropout),
                nn.Linear(spec.hidden, len(spec.labels)),
            )
        else:
            self.net = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(in_dim, len(spec.labels)))
        self.ngram_linear: nn.Linear | None = None
        if spec.ngram:
            buckets = int(spec.ngram["buckets"])
            # Which hash buckets are kept (sorted) and their idf: no vocabulary is stored.
            self.register_buffer("ngram_buckets", torch.zeros(buckets, dtype=torch.int64))
            self.register_buffer("ngram_idf", torch.ones(buckets))
            self.ngram_linear = nn.Linear(buckets, len(spec.labels))
            nn.init.zeros_(self.ngram_linear.weight)
            nn.init.zeros_(self.ngram_linear.bias)
            self._featurizer = None

    def forward(self, features: torch.Tensor, sparse: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.net((features - self.mean) / self.std)
        if self.ngram_linear is not None and sparse is not None:
            logits = logits + torch.sparse.mm(sparse, self.ngram_linear.weight.t()) + self.ngram_linear.bias
        return logits

    def inputs(self, pooled: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.cat([pooled[layer] for layer in self.spec.layers], dim=1)

    # -- hashed n-gram part -------------------------------------------------------------------

    def set_ngram_buffers(self, featurizer: Any) -> None:
        self.ngram_buckets.copy_(torch.as_tensor(featurizer.buckets, dtype=torch.int64))
        self.ngram_idf.copy_(torch.as_tensor(featurizer.idf, dtype=torch.float32))
        self._featurizer = featurizer

    def featurizer(self) -> Any:
        if self.ngram_linear is None:
            return None
        if self._featurizer is None:
            from pipelines.ngrams import NgramFeaturizer

            self._featurizer = NgramFeaturizer.from_spec(
                self.spec.ngram, self.ngram_buckets.tolist(), self.ngram_idf.tolist()
            )
        return self._featurizer

    def predict_features(self, pooled: dict[int, torch.Tensor], texts: list[str] | None = None) -> torch.Tensor:
        """Logits from pooled encoder features (and the texts, for a head with an n-gram part)."""
        sparse = None
        featurizer = self.featurizer()
        if featurizer is not None:
            if texts is None:
                raise ValueError(f"head {self.spec.name!r} has an n-gram part: it needs the texts")
            sparse = featurizer.transform(texts)
        return self(self.inputs(pooled), sparse)


def save_head(head: Head, directory: Path, *, half: bool = False) -> None:
    """`half`: store weight matrices as float16 (half the size; loaded back as float32).

    The standardisation statistics, idf and bucket ids are always stored exactly.
    """
    directory.mkdir(parents=True, exist_ok=True)
    exact = {"mean", "std", "ngram_buckets", "ngram_idf"}
    state = {
        k: (
            v.detach().cpu().to(torch.float16)
            if half and k not in exact and v.is_floating_point()
            else v.detach().cpu()
        ).contiguous()
        for k, v in head.state_dict().items()
    }
    if "ngram_buckets" in state:  # bucket ids < 2**31: int32 halves their size
        state["ngram_buckets"] = state["ngram_buckets"].to(torch.int32)
    save_file(state, str(directory / WEIGHTS))
    (directory / WEIGHTS).chmod(0o644)  # safetensors writes 0600; heads are shipped files
    (directory / CONFIG).write_text(json.dumps(asdict(head.spec), indent=2) + "\n")


def load_head(directory: Path) -> tuple[Head, str]:
    """The head and its content version. Loads safetensors only: no pickle."""
    config, weights = directory / CONFIG, directory / WEIGHTS
    if not config.is_file() or not weights.is_file():
        raise ModelNotFoundError(
            f"head directory {directory} needs {CONFIG} and {WEIGHTS}: train one with `bertstream train`"
        )
    try:
        spec = HeadSpec(**json.loads(config.read_text()))
        head = Head(spec)
        head.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # any corrupt head is one clear line
        raise ModelNotFoundError(
            f"head {directory} is corrupt or does not match its {CONFIG}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if head.net[-1].out_features != len(spec.labels):
        raise ModelNotFoundError(f"head {directory}: {head.net[-1].out_features} outputs but {len(spec.labels)} labels")
    head.eval()
    return head, file_digest([config, weights])
