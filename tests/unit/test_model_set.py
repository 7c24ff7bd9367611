"""One model per pipeline: encoders loaded once and shared, heads tied to their encoder, one-line
errors naming the pipeline. Tiny random BERTs saved as model directories; no services."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from pipelines.heads import Head, HeadSpec, save_head
from pipelines.registry import ModelNotFoundError
from tests.unit.test_classifier import HIDDEN
from worker.config import Pipeline, load_settings
from worker.model import build_models, model_files


def _model_dir(path: Path, tokenizer, seed: int) -> Path:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _head(path: Path, encoder_files: str) -> Path:
    spec = HeadSpec(name="tone", labels=["calm", "upset"], input_dim=HIDDEN, hidden=0, encoder={"files": encoder_files})
    save_head(Head(spec), path)
    return path


def _pipeline(name: str, heads: list[Path], model: Path | None = None) -> Pipeline:
    return Pipeline(
        name=name,
        input=f"{name}.in",
        output=f"{name}.out",
        dead_letter=f"{name}.dead",
        heads=[str(h) for h in heads],
        model=str(model) if model else None,
    )


@pytest.fixture
def dirs(tmp_path: Path, tokenizer) -> dict[str, Path]:
    return {"a": _model_dir(tmp_path / "enc-a", tokenizer, 1), "b": _model_dir(tmp_path / "enc-b", tokenizer, 2)}


def _files(model_dir: Path) -> str:
    from pipelines.encoder import Encoder, EncoderSettings

    return Encoder(EncoderSettings(model_dir=model_dir, device="cpu", precision="fp32", threads=1)).files


def test_pipelines_on_one_encoder_share_it_and_others_get_their_own(dirs: dict[str, Path], tmp_path: Path) -> None:
    head_a = _head(tmp_path / "heads-a" / "tone", _files(dirs["a"]))
    head_b = _head(tmp_path / "heads-b" / "tone", _files(dirs["b"]))
    settings = load_settings(model_dir=dirs["a"], device="cpu", precision="fp32", threads=1)
    pipelines = [_pipeline("one", [head_a]), _pipeline("two", [head_a]), _pipeline("three", [head_b], dirs["b"])]
    models = build_models(settings, pipelines)
    assert models["one"].encoder is models["two"].encoder  # loaded once
    assert models["three"].encoder is not models["one"].encoder
    assert len(models.distinct) == 3 and models.instances >= 1
    assert models["one"].version() == models["two"].version() != models["three"].version()
    assert len(models.versions()) == 3


def test_a_head_on_the_wrong_encoder_stops_start_up_naming_the_pipeline(dirs: dict[str, Path], tmp_path: Path) -> None:
    head_a = _head(tmp_path / "tone", _files(dirs["a"]))
    settings = load_settings(device="cpu", precision="fp32", threads=1)
    with pytest.raises(ModelNotFoundError) as info:
        build_models(settings, [_pipeline("news", [head_a], dirs["b"])])
    message = str(info.value)
    assert message.startswith("pipeline 'news': head") and "trained on" in message and "\n" not in message


def test_an_unbuilt_multilingual_encoder_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BERTSTREAM_CACHE_DIR", str(tmp_path))
    pipeline = Pipeline(name="ml", input="i", output="o", dead_letter="d", heads=["x"], model="multilingual")
    with pytest.raises(ModelNotFoundError, match="bertstream encoders build"):
        build_models(load_settings(), [pipeline])


def test_model_files_cover_encoders_heads_and_knowledge_bases(dirs: dict[str, Path], tmp_path: Path) -> None:
    head = _head(tmp_path / "tone", _files(dirs["a"]))
    kb = tmp_path / "kb.jsonl"
    kb.write_text('{"id": "a", "question": "q?", "answer": "a."}\n')
    support = Pipeline(name="s", input="i", output="o", dead_letter="d", heads=[str(head)], answers=kb)
    files = model_files(load_settings(model_dir=dirs["a"]), [support, _pipeline("b", [head], dirs["b"])])
    assert files == [dirs["a"], dirs["b"], head, kb]
