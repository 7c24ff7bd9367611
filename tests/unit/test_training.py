"""Training, saving and loading heads with a tiny random encoder: no data download, no services."""

from __future__ import annotations

import json
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pipelines.classifier import Classifier
from pipelines.encoder import Encoder, EncoderSettings
from pipelines.heads import Head, HeadSpec, load_head, save_head
from pipelines.training.datasets import Dataset, read_labelled_file
from pipelines.training.dense import fit_head
from pipelines.training.metrics import summary_metrics
from pipelines.training.splits import stratified_split
from pipelines.training.train import TrainConfig, resolve_data, train_heads


@pytest.fixture(scope="module")
def tokenizer():
    try:
        from pipelines.registry import default_model_dir

        return transformers.AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"MiniLM tokenizer not installed: {exc}")


def tiny_config(tokenizer):
    """A 2-layer, 32-wide BERT over the MiniLM vocabulary: fast enough to train in a unit test."""
    return transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )


@pytest.fixture(scope="module")
def encoder(tokenizer):
    torch.manual_seed(0)
    config = tiny_config(tokenizer)
    model = transformers.BertModel(config)
    return Encoder(
        EncoderSettings(window_tokens=32, stride_tokens=8, max_windows=4, precision="fp32", device="cpu"),
        model=model,
        tokenizer=tokenizer,
    )


POS = ["great", "love", "wonderful", "excellent", "happy", "superb"]
NEG = ["awful", "hate", "terrible", "horrible", "sad", "dreadful"]
FILL = ["the", "film", "was", "really", "quite", "a", "day", "and", "food"]


def synthetic(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.choices(FILL, k=2) + rng.choices(POS if label == "pos" else NEG, k=4)
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


@pytest.fixture(scope="module")
def data() -> Dataset:
    return Dataset("synthetic", synthetic(160, 1), synthetic(40, 2), ["neg", "pos"])


def write_csv(path, rows: list[tuple[str, str]]) -> None:
    path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))


def tiny_finetuned(tokenizer, out, rows: list[tuple[str, str]]) -> None:
    """`out`: a tiny random BERT fine-tuned for one epoch on one task, "toy" (a HF directory + heads/toy)."""
    from pipelines.training.finetune import finetune

    torch.manual_seed(0)
    finetune(
        [Dataset("toy", rows, [], ["neg", "pos"])],
        out,
        model=transformers.BertModel(tiny_config(tokenizer)),
        tokenizer=tokenizer,
        epochs=1,
        lr=1e-3,
        batch_size=16,
        window=32,
        progress=False,
    )


def test_train_save_load_round_trip(encoder, data, tmp_path):
    out = tmp_path / "head"
    config = TrainConfig(layers=[1, 2], hidden=16, max_epochs=40, patience=40, lr=5e-3, seed=3)
    head = train_heads(encoder, data, out, config, name="toy", progress=False, use_cache=False)
    assert (out / "model.safetensors").is_file() and (out / "head.json").is_file()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    meta = json.loads((out / "head.json").read_text())
    assert meta["labels"] == ["neg", "pos"]
    assert meta["training"]["config"]["seed"] == 3
    assert set(meta["metrics"]["curves"]) >= {"epoch", "train_loss", "val_loss", "val_macro_f1"}
    assert meta["metrics"]["test"]["accuracy"] > 0.8  # the words decide the label

    loaded, version = load_head(out)
    feats = encoder.encode([t for t, _ in data.test], (1, 2)).features
    with torch.no_grad():
        assert torch.allclose(head.predict_features(feats), loaded.predict_features(feats), atol=1e-5)
    clf = Classifier(encoder, {"toy": loaded}, {"toy": version})
    preds = clf.predict(["a wonderful superb film", "a dreadful awful day"], ["toy"])
    assert [p.results["toy"]["label"] for p in preds] == ["pos", "neg"]
    assert set(preds[0].results["toy"]["scores"]) == {"neg", "pos"}


def test_same_seed_same_head(encoder, data, tmp_path):
    config = TrainConfig(layers=[-1], hidden=0, max_epochs=5, patience=5, seed=7)
    a = train_heads(encoder, data, tmp_path / "a", config, progress=False, use_cache=False)
    b = train_heads(encoder, data, tmp_path / "b", config, progress=False, use_cache=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_early_stopping_keeps_best_epoch():
    torch.manual_seed(0)
    # Pure noise: validation F1 cannot keep improving, so training stops well before max_epochs.
    x = torch.randn(200, 8)
    y = torch.randint(0, 2, (200,))
    spec = HeadSpec(name="noise", labels=["a", "b"], input_dim=8)
    config = TrainConfig(hidden=32, max_epochs=200, patience=3, lr=1e-2, seed=1)
    result = fit_head(spec, x[:150], y[:150], x[150:], y[150:], config, progress=False)
    epochs = result.history["epoch"]
    assert len(epochs) < 200
    assert len(epochs) - result.best_epoch == 3  # stopped exactly `patience` epochs after the best
    best_f1 = max(result.history["val_macro_f1"])
    assert result.history["val_macro_f1"][result.best_epoch - 1] == best_f1
    with torch.no_grad():
        pred = result.head(x[150:]).argmax(dim=1)
    assert summary_metrics(y[150:].tolist(), pred.tolist(), 2)["macro_f1"] == pytest.approx(best_f1, abs=1e-4)


def test_hybrid_ngram_head_round_trip(encoder, data, tmp_path):
    out = tmp_path / "hybrid"
    config = TrainConfig(
        layers=[-1], hidden=0, max_epochs=10, patience=10, lr=5e-3, ngram={"buckets": 64, "min_df": 1, "C": 1.0}
    )
    head = train_heads(encoder, data, out, config, progress=False, use_cache=False, half=True)
    loaded, _ = load_head(out)
    assert loaded.spec.ngram["buckets"] == loaded.ngram_buckets.numel() <= 64
    texts = [t for t, _ in data.test]
    feats = encoder.encode(texts, (-1,)).features
    with torch.no_grad():
        assert torch.allclose(head.predict_features(feats, texts), loaded.predict_features(feats, texts), atol=1e-4)
    assert loaded.spec.metrics["test"]["accuracy"] > 0.8


def test_old_head_dir_without_ngram_loads(tmp_path):
    spec = HeadSpec(name="old", labels=["x", "y"], input_dim=4)
    save_head(Head(spec), tmp_path)
    meta = json.loads((tmp_path / "head.json").read_text())
    meta.pop("ngram")  # a head.json written before the hybrid part existed
    (tmp_path / "head.json").write_text(json.dumps(meta))
    head, _ = load_head(tmp_path)
    assert head.ngram_linear is None
    assert head.predict_features({-1: torch.zeros(3, 4)}).shape == (3, 2)


def test_stratified_split_is_fixed_and_per_class():
    labels = [0] * 90 + [1] * 10
    tr, va = stratified_split(labels, 0.2, seed=5)
    assert sorted(tr + va) == list(range(100))
    assert sum(labels[i] for i in va) == 2 and len(va) == 20
    assert stratified_split(labels, 0.2, seed=5) == (tr, va)


def test_labelled_files(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('body,cls\n"hello, world",a\nbye,b\n,a\n')
    assert read_labelled_file(csv_path, "body", "cls") == [("hello, world", "a"), ("bye", "b")]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "x y", "label": 1}\n\n{"text": "z", "label": 0}\n')
    assert read_labelled_file(jsonl) == [("x y", "1"), ("z", "0")]
    with pytest.raises(KeyError):
        read_labelled_file(csv_path, "text", "label")
    ds = resolve_data(str(csv_path), "body", "cls")
    assert ds.labels == ["a", "b"] and ds.test == []


def test_train_from_csv(encoder, tmp_path):
    path = tmp_path / "train.csv"
    write_csv(path, synthetic(120, 3))
    data = resolve_data(str(path))
    head = train_heads(
        encoder,
        data,
        tmp_path / "csvhead",
        TrainConfig(hidden=0, max_epochs=8, lr=1e-2),
        progress=False,
        use_cache=False,
    )
    assert head.spec.labels == ["neg", "pos"]
    assert head.spec.training["dataset"] == "train"


def test_finetune_smoke_writes_hf_dir_and_heads(tokenizer, tmp_path):
    from pipelines.training.finetune import finetune

    torch.manual_seed(0)
    config = tiny_config(tokenizer)
    model = transformers.BertModel(config)
    a = Dataset("toy_a", synthetic(48, 4), [], ["neg", "pos"])
    b = Dataset("toy_b", [(t, "long" if len(t) > 40 else "short") for t, _ in synthetic(48, 5)], [], ["long", "short"])
    out = tmp_path / "ft"
    info = finetune(
        [a, b],
        out,
        model=model,
        tokenizer=tokenizer,
        epochs=2,
        lr=1e-3,
        batch_size=16,
        window=32,
        progress=False,
        patience=2,
    )
    assert info["tasks"] == ["toy_a", "toy_b"] and 1 <= info["best_epoch"] <= 2
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    enc = Encoder(
        EncoderSettings(model_dir=out, window_tokens=32, stride_tokens=8, max_windows=2, precision="fp32", device="cpu")
    )
    clf = Classifier.load(enc, [str(out / "heads" / "toy_a"), str(out / "heads" / "toy_b")])
    preds = clf.predict(["a wonderful day", "an awful film"])
    assert {p.results["toy_a"]["label"] for p in preds} <= {"neg", "pos"}
    assert {p.results["toy_b"]["label"] for p in preds} <= {"long", "short"}


def test_eval_cli_writes_its_report_under_reports(tokenizer, tmp_path, monkeypatch):
    """`bertstream eval` without --report writes reports/eval-<data>.json (git-ignored), not into
    the directory it runs from."""
    from click.testing import CliRunner

    from bertstream.cli.training import eval_command

    out = tmp_path / "ft"
    tiny_finetuned(tokenizer, out, synthetic(32, 4))
    write_csv(tmp_path / "toy.csv", synthetic(20, 6))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        eval_command,
        [
            "--head",
            str(out / "heads" / "toy"),
            "--model-dir",
            str(out),
            "--data",
            "toy.csv",
            "--no-baselines",
            "--window",
            "32",
            "--stride",
            "8",
            "--max-windows",
            "2",
            "--precision",
            "fp32",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "reports" / "eval-toy.json").read_text())
    assert report["dataset"] == "toy" and (tmp_path / "reports" / "eval-toy.png").is_file()
    assert not list(tmp_path.glob("eval-*"))


def test_finetune_from_dir_keeps_prompt_and_frozen_embeddings(tokenizer, tmp_path):
    """A base directory with a prompt (as e5's): training sees it, the output carries it, and with
    frozen embeddings only the rest of the encoder moves."""
    from safetensors.torch import load_file

    from pipelines.training.finetune import finetune

    torch.manual_seed(0)
    config = tiny_config(tokenizer)
    base = tmp_path / "base"
    transformers.BertModel(config).save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)
    prompts = {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"}
    (base / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    out = tmp_path / "ft"
    data = Dataset("toy", synthetic(48, 4), [], ["neg", "pos"])
    info = finetune(
        [data],
        out,
        model_dir=base,
        epochs=1,
        lr=1e-3,
        batch_size=16,
        window=32,
        progress=False,
        freeze_embeddings=True,
    )
    assert info["prompt"] == "query: " and info["freeze_embeddings"]
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    words = next(k for k in before if k.endswith("word_embeddings.weight"))
    assert torch.equal(before[words], after[words])
    moved = [k for k in before if k != words and not torch.equal(before[k], after[k])]
    assert any("encoder.layer" in k for k in moved)
    enc = Encoder(
        EncoderSettings(model_dir=out, window_tokens=32, stride_tokens=8, max_windows=2, precision="fp32", device="cpu")
    )
    assert enc.prompt == "query: "
    assert json.loads((out / "heads" / "toy" / "head.json").read_text())["encoder"]["files"] == enc.files  # tied to it
    clf = Classifier.load(enc, [str(out / "heads" / "toy")])
    assert clf.predict(["a wonderful day"])[0].results["toy"]["label"] in {"neg", "pos"}


def test_hybrid_ngram_kfold_chooses_c_and_beta(encoder, data, tmp_path):
    out = tmp_path / "hybrid-kfold"
    ngram = {"buckets": 64, "min_df": 1, "C": 1.0, "Cs": [0.5, 2.0], "folds": 3, "ngram_max": 1}
    config = TrainConfig(layers=[-1], hidden=0, max_epochs=10, patience=10, lr=5e-3, ngram=ngram)
    train_heads(encoder, data, out, config, progress=False, use_cache=False)
    loaded, _ = load_head(out)
    kfold = loaded.spec.metrics["ngram"]["kfold"]
    assert kfold["folds"] == 3 and kfold["C"] in (0.5, 2.0)
    assert len(kfold["trials"]) == 2 * 13
    assert loaded.spec.ngram["C"] == kfold["C"] and loaded.spec.ngram["beta"] == kfold["beta"]
    assert "beta_rule" in loaded.spec.ngram and loaded.spec.ngram["ngram_max"] == 1


def test_eval_reports_frozen_and_finetuned_side_by_side(encoder, tokenizer, tmp_path):
    from pipelines.training.evaluate import add_finetuned, evaluate, format_table

    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    write_csv(train_csv, synthetic(96, 6))
    write_csv(test_csv, synthetic(32, 7))
    train_heads(
        encoder,
        resolve_data(str(train_csv)),
        tmp_path / "heads" / "toy",
        TrainConfig(hidden=0, max_epochs=4, lr=1e-2),
        progress=False,
        use_cache=False,
    )
    report = evaluate(
        encoder, [str(tmp_path / "heads" / "toy")], str(test_csv), train_file=str(train_csv), progress=False
    )
    out = tmp_path / "ft"
    tiny_finetuned(tokenizer, out, synthetic(64, 8))
    tuned = Encoder(
        EncoderSettings(model_dir=out, window_tokens=32, stride_tokens=8, max_windows=2, precision="fp32", device="cpu")
    )
    add_finetuned(report, tuned, out / "heads" / "toy", str(test_csv), train_file=str(train_csv), progress=False)
    names = list(report["models"])
    assert names[:2] == ["head:toy", "finetuned:toy"] and "tfidf+logreg" in names
    row = report["models"]["finetuned:toy"]
    assert row["kind"] == "finetuned" and 0.0 <= row["accuracy"] <= 1.0 and row["encoder"]["name"] == "ft"
    # Each head is read by the encoder it was trained on: no warning of a different one.
    assert "warning" not in row["head"] and "warning" not in report["models"]["head:toy"]["head"]
    assert "finetuned:toy" in format_table([report])


def test_encoder_mismatch_compares_files_and_windows():
    from pipelines.training.evaluate import encoder_mismatch

    current = {"version": "run-b", "files": "f1", "window_tokens": 256, "stride_tokens": 64, "max_windows": 8}
    # Fine-tuned heads record a weights digest as "version": the files decide, as in the worker.
    assert encoder_mismatch({"version": "digest", "files": "f1", "window_tokens": 256}, current) == []
    assert encoder_mismatch({"version": "run-b", "files": "f2", "stride_tokens": 32}, current) == [
        "files",
        "stride_tokens",
    ]
    assert encoder_mismatch({"version": "run-a"}, current) == ["version"]  # a head from before "files"
