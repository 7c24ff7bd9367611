"""Fine-tuned encoders as low-rank deltas: extract, rebuild, and the same bytes on every build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file

from bertstream.encoders.delta import apply, extract
from pipelines.encoder import files_digest


def _save(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )
    base = transformers.BertModel(config)
    base_dir = _save(base, tmp_path / "base")
    (base_dir / "config_sentence_transformers.json").write_text('{"prompts": {"query": "query: "}}')
    with torch.no_grad():  # "fine-tuning": a rank-2 change of one matrix, a bias and a layer norm moved
        q = base.encoder.layer[0].attention.self.query
        q.weight += torch.randn(64, 2) @ torch.randn(2, 64) * 0.01
        base.encoder.layer[1].output.dense.bias += 0.5
        base.encoder.layer[1].output.LayerNorm.weight *= 1.1
    return base_dir, _save(base, tmp_path / "tuned")


def test_delta_rebuilds_the_tuned_encoder(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base_dir, tuned_dir = pair
    meta = extract(base_dir, tuned_dir, tmp_path / "delta", rank=4, info={"base": "test"})
    assert meta["relative_error"]["max"] < 1e-3  # a rank-2 change kept at rank 4: only int16 rounding
    stored = load_file(tmp_path / "delta" / "delta.safetensors")
    assert {k.rsplit(".", 1)[1] for k in stored} == {"u", "v", "scale", "value"}
    assert not any("word_embeddings" in k for k in stored)  # unchanged tensors are not stored

    built = apply(base_dir, tmp_path / "delta", tmp_path / "merged")
    assert built.built and (tmp_path / "merged" / "config_sentence_transformers.json").is_file()
    merged, tuned = load_file(tmp_path / "merged" / "model.safetensors"), load_file(tuned_dir / "model.safetensors")
    for name, value in tuned.items():
        assert torch.allclose(merged[name], value, atol=1e-5), name
    bias = "encoder.layer.1.output.dense.bias"
    assert torch.equal(merged[bias], tuned[bias])  # vectors are kept whole
    transformers.BertModel.from_pretrained(tmp_path / "merged")  # a Hugging Face directory

    digest = files_digest(tmp_path / "merged")
    assert not apply(base_dir, tmp_path / "delta", tmp_path / "merged").built  # already built: a no-op
    assert apply(base_dir, tmp_path / "delta", tmp_path / "merged", force=True).built
    assert files_digest(tmp_path / "merged") == digest  # the same bytes again: heads stay tied to it


def test_delta_refuses_another_base(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base_dir, tuned_dir = pair
    extract(base_dir, tuned_dir, tmp_path / "delta", rank=2, info={"base": "test"})
    meta = json.loads((tmp_path / "delta" / "delta.json").read_text())
    (tmp_path / "delta" / "delta.json").write_text(json.dumps({**meta, "base_files": "0" * 12}))
    with pytest.raises(ValueError, match="another base encoder"):
        apply(base_dir, tmp_path / "delta", tmp_path / "merged")
