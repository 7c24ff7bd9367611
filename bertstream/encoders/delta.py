"""Fine-tuned encoders shipped as low-rank deltas of a built base encoder.

A fine-tuned multilingual-e5-small is 470 MB; what fine-tuning changed is close to low rank. `extract`
keeps, per weight matrix, the top `rank` singular directions of (tuned - base) as two int16 factors
with one float64 scale, and every other changed tensor (biases, layer norms) whole: a few MB, which
git can hold. `apply` rebuilds the encoder from the base with an integer matrix product, so the
merged weights, and the content hash a head is tied to, are the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines.encoder import files_digest

WEIGHTS = "model.safetensors"
DELTA = "delta.safetensors"
META = "delta.json"
MIN_LOW_RANK = 64  # a matrix with both sides at least this long is kept as factors; smaller ones whole
INT16 = 32767
# The base directory's files that hold for the merged encoder as they are.
CARRIED = (
    "config.json",
    "config_sentence_transformers.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@dataclass(frozen=True)
class Applied:
    path: Path
    built: bool  # False: already built from this base and delta


def extract(base_dir: Path, tuned_dir: Path, out_dir: Path, rank: int, info: dict[str, Any]) -> dict[str, Any]:
    """Write `out_dir`/delta.safetensors and delta.json: `tuned_dir` as a delta of `base_dir`."""
    from safetensors.torch import load_file, save_file

    base, tuned = load_file(base_dir / WEIGHTS), load_file(tuned_dir / WEIGHTS)
    if set(base) != set(tuned):
        raise ValueError("the tuned encoder's tensors are not the base's")
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    for name in sorted(base):
        diff = tuned[name].double() - base[name].double()
        if not diff.any():
            continue
        if diff.dim() == 2 and min(diff.shape) >= MIN_LOW_RANK:
            u, v, scale = _factors(diff, rank)
            tensors[f"{name}.u"], tensors[f"{name}.v"], tensors[f"{name}.scale"] = u, v, scale
            approx = (u.long() @ v.long()).double() * scale
            errors[name] = float((approx - diff).norm() / diff.norm())
        else:
            tensors[f"{name}.value"] = tuned[name].float().contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / DELTA), metadata={"format": "pt"})
    meta = {
        **info,
        "rank": rank,
        "base_files": files_digest(base_dir),
        "delta_sha256": _sha256(out_dir / DELTA),
        "relative_error": {"mean": sum(errors.values()) / max(len(errors), 1), "max": max(errors.values(), default=0)},
    }
    (out_dir / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _factors(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int16 u [m, r], v [r, n] and a float64 scale with u @ v * scale close to `diff`."""
    left, sing, right = torch.linalg.svd(diff, full_matrices=False)
    root = sing[:rank].sqrt()
    a, b = left[:, :rank] * root, root[:, None] * right[:rank]
    sa, sb = a.abs().max() / INT16, b.abs().max() / INT16
    u, v = (a / sa).round().to(torch.int16), (b / sb).round().to(torch.int16)
    return u.contiguous(), v.contiguous(), torch.tensor([float(sa * sb)], dtype=torch.float64)


def apply(base_dir: Path, delta_dir: Path, out: Path, force: bool = False) -> Applied:
    """Build `out` (a Hugging Face directory) from the base and the delta, atomically; a no-op when
    it is already built from these two."""
    from safetensors.torch import load_file, save_file

    meta = json.loads((delta_dir / META).read_text())
    if files_digest(base_dir) != meta["base_files"]:
        raise ValueError(f"{delta_dir.name} was made from another base encoder than {base_dir}: rebuild the base")
    stamp = {"base_files": meta["base_files"], "delta_sha256": _sha256(delta_dir / DELTA)}
    if not force and _stamp(out) == stamp:
        return Applied(out, built=False)
    weights = load_file(base_dir / WEIGHTS)
    delta = load_file(delta_dir / DELTA)
    for name in list(weights):
        if f"{name}.value" in delta:
            weights[name] = delta[f"{name}.value"]
        elif f"{name}.u" in delta:
            product = (delta[f"{name}.u"].long() @ delta[f"{name}.v"].long()).double() * delta[f"{name}.scale"]
            weights[name] = (weights[name].double() + product).float().contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        for name in CARRIED:
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, tmp / name)
        if (delta_dir / "PROVENANCE.md").is_file():
            shutil.copyfile(delta_dir / "PROVENANCE.md", tmp / "PROVENANCE.md")
        (tmp / "delta.stamp").write_text(json.dumps(stamp) + "\n")  # not one of the model files (MODEL_FILES)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Applied(out, built=True)


def _stamp(out: Path) -> dict[str, str] | None:
    try:
        return json.loads((out / "delta.stamp").read_text())
    except (OSError, ValueError):
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
