"""The VADER loaders on a small tarball laid out like the real one: no download."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from pipelines.training import datasets

ROWS = {  # corpus: [(id, mean, text, ratings)]
    "tweets": [("1", 2.5, "love it", [2, 3]), ("2", -0.2, "meh", [0, -1, 0, 0, 0])],
    "amazonReviewSnippets": [("1_1", -1.0, "broke on day one", [-1, -1]), ("1_2", 0.6, "love it", [1, 0])],
    "movieReviewSnippets": [("7", 0.5, "fine film", [1, 0])],
    "nytEditorialSnippets": [],
}


def _add(tf: tarfile.TarFile, name: str, text: str) -> None:
    raw = ("\ufeff" + text).encode()  # the real files start with a byte-order mark
    info = tarfile.TarInfo(f"hutto_ICWSM_2014/{name}")
    info.size = len(raw)
    tf.addfile(info, io.BytesIO(raw))


@pytest.fixture
def vader_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSTREAM_DATA_DIR", str(tmp_path))
    root = datasets.dataset_dir("vader")
    (root / "additional_resources").mkdir(parents=True)
    with tarfile.open(root / "additional_resources" / "hutto_ICWSM_2014.tar.gz", "w:gz") as tf:
        for corpus, rows in ROWS.items():
            _add(tf, f"{corpus}_GroundTruth.txt", "".join(f"{i}\t{m}\t{t}\n" for i, m, t, _ in rows))
            _add(
                tf, f"{corpus}_anonDataRatings.txt", "".join(f"{i}\t{m}\t0.5\t{json.dumps(r)}\n" for i, m, _, r in rows)
            )
    (root / "FETCHED.json").write_text("{}")
    return root


def test_vader_ratings_join_the_panels_to_the_texts(vader_dir):
    ratings = datasets.vader_ratings()
    assert ratings["meh"] == [0, -1, 0, 0, 0]
    assert ratings["broke on day one"] == [-1, -1]
    assert ratings["love it"] == [1, 0]  # the first corpus read (amazon) wins, as for the corpus lookup
    assert set(ratings) == {"love it", "meh", "broke on day one", "fine film"}


def test_vader_labels_come_from_the_mean_at_half_a_point():
    assert [datasets.vader_label(m) for m in (-0.5, -0.49, 0.49, 0.5)] == ["negative", "neutral", "neutral", "positive"]


def test_vader_ratings_need_the_fetched_set(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSTREAM_DATA_DIR", str(tmp_path))
    with pytest.raises(datasets.DatasetNotFetched, match="bertstream data vader"):
        datasets.vader_ratings()
