"""Training: task heads over a frozen shared encoder (mode "heads"); the full fine-tune is in `finetune`.

Mode ``heads``: the encoder is frozen; the pooled features of every hidden layer are computed
once per dataset and cached (see `pipelines.training.features`); a `Head` (standardisation +
MLP or linear layer over the chosen layers, see `dense`) is trained with a fixed seed on a
stratified validation split carved from the training data, with early stopping on validation
macro-F1 and optional class weights, plus optionally a hashed n-gram part (see `fusion`). The
output directory holds ``model.safetensors`` and ``head.json`` (labels, training config, metrics
and learning curves).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.encoder import Encoder
from pipelines.heads import Head, HeadSpec, load_head, save_head
from pipelines.training.config import TrainConfig
from pipelines.training.datasets import Dataset, load, read_labelled_file
from pipelines.training.dense import FitResult, fit_head
from pipelines.training.features import cached_features, select_layers
from pipelines.training.fusion import fit_ngram_part, kfold_ngram_choice
from pipelines.training.metrics import summary_metrics
from pipelines.training.splits import stratified_group_split, stratified_split

__all__ = ["CombinedDataset", "TrainConfig", "combine", "command_line", "resolve_data", "split_features", "train_heads"]


@dataclass
class CombinedDataset(Dataset):
    """Several datasets trained on as one: their splits concatenated, their features cached apart."""

    parts: list[Dataset] = field(default_factory=list)


def combine(parts: Sequence[Dataset]) -> CombinedDataset:
    """One set of `parts`; labels in the order of the part whose labels cover all, else sorted."""
    union = {label for part in parts for label in part.labels}
    covering = [part.labels for part in parts if set(part.labels) == union]
    labels = list(covering[0]) if covering else sorted(union)
    train = [example for part in parts for example in part.train]
    test = [example for part in parts for example in part.test]
    groups = None
    if any(part.groups is not None for part in parts):  # a part without groups: one group per example
        groups = [
            f"{part.name}/{part.groups[i] if part.groups is not None else i}"
            for part in parts
            for i in range(len(part.train))
        ]
    return CombinedDataset("+".join(part.name for part in parts), train, test, labels, list(parts), groups=groups)


def resolve_data(
    source: str, text_column: str = "text", label_column: str = "label", test_file: str | None = None
) -> Dataset:
    """A built-in dataset name, a comma-separated list of them (trained on as one), or a
    CSV/JSONL/Parquet file (optionally with a test file)."""
    path = Path(source)
    if path.is_file():
        train = read_labelled_file(path, text_column, label_column)
        test = read_labelled_file(Path(test_file), text_column, label_column) if test_file else []
        labels = sorted({label for _, label in train})
        return Dataset(path.stem, train, test, labels)
    names = [name.strip() for name in source.split(",") if name.strip()]
    if len(names) > 1:
        return combine([load(name) for name in names])
    return load(source)


def _strata(data: Dataset, y: list[int]) -> list[Any]:
    """What validation splits are stratified by: the label; in a combined set (part, label), so that
    every part gives its share, and a part's share is the same whatever parts sort after it."""
    if not isinstance(data, CombinedDataset):
        return y
    part_of = [part.name for part in data.parts for _ in part.train]
    return list(zip(part_of, y))


def split_features(
    encoder: Encoder, data: Dataset, split: str, *, progress: bool = True, use_cache: bool = True
) -> torch.Tensor:
    """The cached features of `data.train` or `data.test`; a combined set's parts are cached one by
    one, under their own names, so that each part is encoded once whatever it is combined with."""
    parts = [part for part in getattr(data, "parts", None) or [data] if getattr(part, split)]
    feats = [
        cached_features(
            encoder,
            [t for t, _ in getattr(part, split)],
            tag=f"{part.name}-{split}",
            progress=progress,
            use_cache=use_cache,
        )
        for part in parts
    ]
    return torch.cat(feats) if feats else torch.zeros(0, encoder.num_layers + 1, encoder.hidden_size)


def command_line() -> str:
    return "bertstream " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@dataclass
class _TrainSet:
    """The training texts with their layer-concatenated features, labels and validation split."""

    texts: list[str]
    x: torch.Tensor  # [n, in_dim]
    y: torch.Tensor
    train_idx: list[int]
    val_idx: list[int]
    groups: list[str] | None = None  # kept together by splits and folds

    @property
    def x_val(self) -> torch.Tensor:
        return self.x[torch.tensor(self.val_idx)]

    @property
    def y_val(self) -> torch.Tensor:
        return self.y[torch.tensor(self.val_idx)]


@dataclass
class _TestSet:
    texts: list[str]
    y: list[int]  # -1: a label the head does not have
    features: torch.Tensor  # the cached [n, L+1, hidden] features


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
    feats = split_features(encoder, data, "train", progress=progress, use_cache=use_cache)
    x_all = _concat(feats, config.layers, encoder.num_layers)
    strata = _strata(data, y_all.tolist())
    if data.groups is None:
        train_idx, val_idx = stratified_split(strata, config.val_fraction, config.seed)
    else:  # a message and its shorter forms on one side of the split
        train_idx, val_idx = stratified_group_split(strata, data.groups, config.val_fraction, config.seed)
    ts = _TrainSet(texts, x_all, y_all, train_idx, val_idx, data.groups)
    spec = _head_spec(name, data, encoder, config)
    tr = torch.tensor(train_idx)
    result = fit_head(spec, x_all[tr], y_all[tr], ts.x_val, ts.y_val, config, progress=progress)
    head, ngram_info, kfold = result.head, {}, {}
    if config.ngram:
        head, ngram_info, kfold = _add_ngram_part(result, spec, ts, config, progress)
    if config.refit:
        head = _refit(spec, ts, result.best_epoch, ngram_info, config, progress)
    metrics = _validation_metrics(result, ngram_info, kfold)
    test = None
    if data.test:
        test_texts = [t for t, _ in data.test]
        tfeats = split_features(encoder, data, "test", progress=progress, use_cache=use_cache)
        test = _TestSet(test_texts, [label_index.get(label, -1) for _, label in data.test], tfeats)
        metrics["test"] = _test_metrics(head, test, len(data.labels), encoder.num_layers)
    head.spec.training = {
        "mode": "heads",
        "dataset": data.name,
        "dataset_fingerprint": data.fingerprint,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": len(data.test),
        **(
            {"parts": {p.name: [len(p.train), len(p.test)] for p in data.parts}}
            if isinstance(data, CombinedDataset)
            else {}
        ),
        "config": asdict(config),
        "command": command or "",
    }
    head.spec.metrics = metrics
    save_head(head, Path(out_dir), half=half)
    if half:  # the metrics above must describe the stored (rounded) weights
        head, _ = load_head(Path(out_dir))
        if test is not None:
            head.spec.metrics["test"] = _test_metrics(head, test, len(data.labels), encoder.num_layers)
            save_head(head, Path(out_dir), half=True)
    return head


def _head_spec(name: str, data: Dataset, encoder: Encoder, config: TrainConfig) -> HeadSpec:
    return HeadSpec(
        name=name,
        labels=list(data.labels),
        input_dim=encoder.hidden_size,
        layers=list(config.layers),
        hidden=config.hidden,
        dropout=config.dropout,
        encoder={"name": encoder.name, "version": encoder.version, "files": encoder.files, **_settings_dict(encoder)},
    )


def _add_ngram_part(
    result: FitResult, spec: HeadSpec, ts: _TrainSet, config: TrainConfig, progress: bool
) -> tuple[Head, dict[str, Any], dict[str, Any]]:
    """(hybrid head, what `fit_ngram_part` chose, the k-fold choice or {})."""
    options = dict(config.ngram)
    kfold: dict[str, Any] = {}
    if options.get("folds"):  # (C, beta) from k-fold out-of-fold scores; temperature still on val
        kfold = kfold_ngram_choice(
            spec, ts.x, ts.y, ts.texts, config, result.best_epoch, progress=progress, groups=ts.groups
        )
        options.update({"C": kfold["C"], "betas": (kfold["beta"],)})
    ngram_info = fit_ngram_part(result.head, ts.texts, ts.y, ts.train_idx, ts.val_idx, ts.x_val, options)
    return ngram_info.pop("head"), ngram_info, kfold


def _refit(
    spec: HeadSpec, ts: _TrainSet, epochs: int, ngram_info: dict[str, Any], config: TrainConfig, progress: bool
) -> Head:
    """Retrain on all training data for the `epochs` (and with the n-gram C, beta, temperature) validation chose."""
    head = fit_head(spec, ts.x, ts.y, ts.x_val, ts.y_val, config, progress=progress, stop_after=epochs).head
    if not config.ngram:
        return head
    options = {
        **config.ngram,
        "C": ngram_info["C"],
        "betas": (ngram_info["beta"],),
        "temperature": ngram_info["temperature"],
        "val_nll_calibrated": ngram_info["val_nll_calibrated"],
    }
    return fit_ngram_part(head, ts.texts, ts.y, list(range(len(ts.texts))), ts.val_idx, ts.x_val, options)["head"]


def _validation_metrics(result: FitResult, ngram_info: dict[str, Any], kfold: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "best_epoch": result.best_epoch,
        "val": result.val_metrics,
        "curves": result.history,
        "train_seconds": round(result.seconds, 1),
    }
    if ngram_info:
        metrics["val_dense_only"] = metrics["val"]
        metrics["val"] = {**ngram_info["val"], "loss": None}
        metrics["ngram"] = {
            "beta": ngram_info["beta"],
            "temperature": ngram_info["temperature"],
            "beta_trials": ngram_info["beta_trials"],
        }
        if kfold:
            metrics["ngram"]["kfold"] = kfold
    return metrics


def _test_metrics(head: Head, test: _TestSet, n_labels: int, num_layers: int) -> dict[str, float]:
    """Accuracy and macro-F1 on the test texts whose label the head has."""
    with torch.no_grad():
        pred = (
            head.predict_features(select_layers(test.features, head.spec.layers, num_layers), test.texts)
            .argmax(dim=1)
            .tolist()
        )
    keep = [i for i, y in enumerate(test.y) if y >= 0]
    return summary_metrics([test.y[i] for i in keep], [pred[i] for i in keep], n_labels)


def _concat(all_feats: torch.Tensor, layers: Sequence[int], num_layers: int) -> torch.Tensor:
    pooled = select_layers(all_feats, layers, num_layers)
    return torch.cat([pooled[layer] for layer in layers], dim=1)


def _settings_dict(encoder: Encoder) -> dict[str, Any]:
    s = encoder.settings
    return {
        "window_tokens": s.window_tokens,
        "stride_tokens": s.stride_tokens,
        "max_windows": s.max_windows,
        "precision": encoder.precision,
    }
