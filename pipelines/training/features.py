"""Frozen-encoder features for training and evaluation, cached on disk.

Encoding 20 Newsgroups whole (overlapping windows) costs many CPU-minutes, so the pooled
features of every hidden layer are computed once per (encoder weights, encoder settings,
dataset content) and kept as safetensors under ``$BERTSTREAM_DATA_DIR/features/``. Any layer
combination a head wants is then a slice of the cached tensor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pipelines.encoder import Encoder
from pipelines.training.datasets import data_dir

CHUNK = 256  # texts per encode() call: the unit of the progress bar


def all_layers(encoder: Encoder) -> tuple[int, ...]:
    """Every hidden state: embeddings output (0) to the last layer (num_layers)."""
    return tuple(range(encoder.num_layers + 1))


def encode_all(encoder: Encoder, texts: Sequence[str], desc: str = "encode", progress: bool = True) -> torch.Tensor:
    """[n, num_layers + 1, hidden] float32: pooled features of every layer for every text.

    Texts are processed in length order so that each encode() call gets similar lengths.
    """
    layers = all_layers(encoder)
    n = len(texts)
    out = torch.zeros(n, len(layers), encoder.hidden_size)
    order = sorted(range(n), key=lambda i: len(texts[i]))
    bar = tqdm(total=n, desc=desc, unit="text", disable=not progress, dynamic_ncols=True)
    for start in range(0, n, CHUNK):
        idx = order[start : start + CHUNK]
        enc = encoder.encode([texts[i] for i in idx], layers)
        stacked = torch.stack([enc.features[layer] for layer in layers], dim=1)
        out[torch.tensor(idx)] = stacked
        bar.update(len(idx))
    bar.close()
    return out


def cache_key(encoder: Encoder, content_fingerprint: str) -> tuple[str, dict]:
    s = encoder.settings
    parts = {
        "encoder": encoder.name,
        "version": encoder.version,
        "window_tokens": s.window_tokens,
        "stride_tokens": s.stride_tokens,
        "max_windows": s.max_windows,
        "precision": encoder.precision,
        "data": content_fingerprint,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16], parts


def texts_fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "replace") + b"\x00")
    return h.hexdigest()[:16]


def cached_features(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    tag: str = "texts",
    cache_dir: Path | None = None,
    progress: bool = True,
    use_cache: bool = True,
) -> torch.Tensor:
    """encode_all() with an on-disk cache (float16 on disk, float32 returned)."""
    if encoder.version == "in-memory" or not use_cache:
        return encode_all(encoder, texts, desc=f"encode {tag}", progress=progress)
    key, parts = cache_key(encoder, texts_fingerprint(texts))
    directory = (cache_dir or data_dir() / "features") / f"{tag}-{key}"
    path = directory / "features.safetensors"
    if path.is_file():
        return load_file(str(path))["features"].to(torch.float32)
    feats = encode_all(encoder, texts, desc=f"encode {tag}", progress=progress)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "features.safetensors.tmp"
    save_file({"features": feats.to(torch.float16).contiguous()}, str(tmp))
    tmp.replace(path)
    (directory / "key.json").write_text(json.dumps({**parts, "n": len(texts), "tag": tag}, indent=2))
    return feats


def select_layers(all_feats: torch.Tensor, layers: Sequence[int], num_layers: int) -> dict[int, torch.Tensor]:
    """The pooled dict a Head expects ({layer: [n, hidden]}), from the [n, L+1, hidden] cache."""
    out = {}
    for layer in layers:
        index = layer if layer >= 0 else num_layers + 1 + layer
        out[layer] = all_feats[:, index, :]
    return out
