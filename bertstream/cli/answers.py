"""`bertstream eval-answers`: answer retrieval measured on a labelled file, with the answer weight
chosen and the thresholds calibrated.

The eval file is JSONL: `{"question": str, "expected": <KB id> | null, "lang": str}`; null marks an
out-of-scope question, which should get no answer.

- Answer weight w (an entry scores `(best phrasing cosine + w * answer cosine) / (1 + w)`): the w of
  `WEIGHTS` with the best top-1 on the in-scope questions, the smallest on ties.
- Threshold rule: the highest threshold (rounded down to 3 decimals) at which at least 90% of the
  in-scope questions still get an answer; out-of-scope abstention only grows with the threshold, so
  this is the one that maximizes it under that bound. Per language: the same rule on the in-scope
  questions of each language the detector (`pipelines.language.detect`, as at answer time) finds
  at least `MIN_PER_LANGUAGE` times, plus the one threshold as "default" for the others.
- k-fold check: w and thresholds chosen on k-1 folds, measured on the held-out fold, every question
  held out once; what to expect on new questions, since the other figures are measured on the
  data that chose them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from pipelines.answers import DEFAULT, Threshold, check_threshold, mix, threshold_for

ANSWER_RATE = 0.90  # share of in-scope questions that must get an answer at the calibrated threshold
TARGETS = {"top1_en": 0.90, "top1_zh": 0.80, "abstention": 0.80, "answer_rate": ANSWER_RATE}
MIN_PER_LANGUAGE = 20  # in-scope questions a detected language needs for a threshold of its own
WEIGHTS = tuple(round(0.05 * i, 2) for i in range(41))  # the answer weights tried: 0 to 2
FOLDS = 5


@dataclass(frozen=True)
class EvalQuestion:
    question: str
    expected: str | None
    lang: str


@dataclass(frozen=True)
class Scored:
    item: EvalQuestion
    top: list[str]  # KB ids, best first
    score: float  # the top entry's score
    detected: str = "und"  # the language code the detector gives the question: picks its threshold


@dataclass(frozen=True)
class Matrix:
    """Every question's score against every entry, both parts, so that any w costs no encoding."""

    questions: list[EvalQuestion]
    detected: list[str]
    ids: list[str]  # KB ids, the columns
    phrasing: torch.Tensor  # [questions, entries]: cosine of each entry's best phrasing
    answer: torch.Tensor  # [questions, entries]: cosine of each entry's answer

    def scored(self, weight: float, rows: list[int] | None = None) -> list[Scored]:
        rows = list(range(len(self.questions))) if rows is None else rows
        scores = mix(self.phrasing[rows], self.answer[rows], weight)
        top_scores, top = torch.topk(scores, min(3, len(self.ids)), dim=1)
        return [
            Scored(self.questions[r], [self.ids[i] for i in t], s[0], self.detected[r])
            for r, t, s in zip(rows, top.tolist(), top_scores.tolist())
        ]


def load_eval(path: Path, known_ids: set[str]) -> list[EvalQuestion]:
    out = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("question"), str) or not doc["question"].strip():
            raise click.ClickException(f"{path}:{number}: needs a non-empty string 'question'")
        expected = doc.get("expected")
        if expected is not None and expected not in known_ids:
            raise click.ClickException(f"{path}:{number}: expected {expected!r} is not an id of the knowledge base")
        out.append(EvalQuestion(doc["question"], expected, str(doc.get("lang") or "?")))
    if not any(q.expected for q in out):
        raise click.ClickException(f"{path}: no in-scope question (one with an expected id) to calibrate on")
    return out


def calibrate(in_scope_scores: list[float], answer_rate: float = ANSWER_RATE) -> float:
    """The highest threshold, rounded down to 3 decimals, that still answers `answer_rate` of these scores."""
    ranked = sorted(in_scope_scores, reverse=True)
    kept = ranked[max(1, math.ceil(answer_rate * len(ranked))) - 1]
    return math.floor(kept * 1000) / 1000


def calibrate_languages(scored: list[Scored], min_questions: int = MIN_PER_LANGUAGE) -> dict[str, float]:
    """The rule per detected language with at least `min_questions` in-scope questions, and over all
    in-scope questions as "default"."""
    inside = [s for s in scored if s.item.expected]
    out = {DEFAULT: calibrate([s.score for s in inside])}
    for language, count in sorted(Counter(s.detected for s in inside).items()):
        if count >= min_questions and language != "und":
            out[language] = calibrate([s.score for s in inside if s.detected == language])
    return out


def fit_threshold(scored: list[Scored], per_language: bool) -> Threshold:
    if per_language:
        return calibrate_languages(scored)
    return calibrate([s.score for s in scored if s.item.expected])


def choose_weight(matrix: Matrix, rows: list[int] | None = None) -> float:
    """The w of WEIGHTS with the best top-1 on the in-scope questions of `rows`, the smallest on ties."""
    rows = list(range(len(matrix.questions))) if rows is None else rows
    inside = [r for r in rows if matrix.questions[r].expected]
    expected = torch.tensor([matrix.ids.index(matrix.questions[r].expected or "") for r in inside])
    best, chosen = -1, 0.0
    for weight in WEIGHTS:
        right = int((mix(matrix.phrasing[inside], matrix.answer[inside], weight).argmax(dim=1) == expected).sum())
        if right > best:
            best, chosen = right, weight
    return chosen


def measure(scored: list[Scored], threshold: Threshold | list[float]) -> dict[str, Any]:
    """Per language and overall: top-1/top-3 accuracy, answer rate, right answers given; abstention out
    of scope. `threshold`: one, a mapping by detected language, or one per question (k-fold)."""
    if isinstance(threshold, list):
        if len(threshold) != len(scored):
            raise ValueError(f"{len(threshold)} thresholds for {len(scored)} questions")
        limits = threshold
    else:
        limits = [threshold_for(threshold, s.detected) for s in scored]
    pairs = list(zip(scored, limits))
    langs = sorted({s.item.lang for s in scored})
    out: dict[str, Any] = {}
    for lang in [*langs, "all"]:
        group = [(s, t) for s, t in pairs if lang in ("all", s.item.lang)]
        inside = [(s, t) for s, t in group if s.item.expected]
        outside = [(s, t) for s, t in group if not s.item.expected]
        row: dict[str, Any] = {"in_scope": len(inside), "out_of_scope": len(outside)}
        if inside:
            row |= {
                "top1": _share(inside, lambda s, t: s.top[0] == s.item.expected),
                "top3": _share(inside, lambda s, t: s.item.expected in s.top[:3]),
                "answer_rate": _share(inside, lambda s, t: s.score >= t),
                "answered_right": _share(inside, lambda s, t: s.score >= t and s.top[0] == s.item.expected),
            }
        if outside:
            row["abstention"] = _share(outside, lambda s, t: s.score < t)
        out[lang] = row
    return out


def k_fold(matrix: Matrix, weight: float | None, per_language: bool, k: int = FOLDS) -> dict[str, Any]:
    """Held-out figures: on each fold (every k-th question), w (`weight`, or chosen) and the thresholds
    come from the other folds; the held-out questions of all folds are measured together."""
    n = len(matrix.questions)
    held_out: list[Scored] = []
    limits: list[float] = []
    weights: list[float] = []
    for fold in range(k):
        fit = [r for r in range(n) if r % k != fold]
        held = [r for r in range(n) if r % k == fold]
        if not held:
            continue
        w = choose_weight(matrix, fit) if weight is None else weight
        threshold = fit_threshold(matrix.scored(w, fit), per_language)
        scored = matrix.scored(w, held)
        held_out += scored
        limits += [threshold_for(threshold, s.detected) for s in scored]
        weights.append(w)
    return {"weights": weights, "metrics": measure(held_out, limits)}


def _share(items: list[tuple[Scored, float]], test: Any) -> float:
    return round(sum(1 for s, t in items if test(s, t)) / len(items), 4)


def check_targets(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {
        "top1_en": metrics.get("en", {}).get("top1"),
        "top1_zh": metrics.get("zh", {}).get("top1"),
        "abstention": metrics["all"].get("abstention"),
        "answer_rate": metrics["all"].get("answer_rate"),
    }
    return {
        name: {"target": TARGETS[name], "value": value, "met": value is not None and value >= TARGETS[name]}
        for name, value in found.items()
    }


def format_threshold(threshold: Threshold) -> str:
    if isinstance(threshold, dict):
        return ", ".join(f"{lang} {value:.3f}" for lang, value in threshold.items())
    return f"{threshold:.3f}"


def parse_threshold(text: str) -> Threshold:
    """`0.87` or `en=0.867,zh=0.892,default=0.873`; a click error (one line) if it is neither."""
    from pipelines.answers import KnowledgeBaseError

    try:
        if "=" not in text:
            return check_threshold(float(text))
        pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
        return check_threshold({lang.strip(): float(value) for lang, value in pairs})
    except ValueError:
        raise click.BadParameter(f"{text!r}: give a cosine (0.87) or en=0.867,zh=0.892,default=0.873") from None
    except KnowledgeBaseError as exc:
        raise click.BadParameter(str(exc)) from None


def format_table(metrics: dict[str, Any], targets: dict[str, dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "-"

    head = f"{'lang':5s} {'in-scope':>8s} {'top-1':>6s} {'top-3':>6s} {'answered':>8s} {'right':>6s}"
    lines = [f"{head} {'out-of-scope':>12s} {'abstained':>9s}"]
    for lang, row in metrics.items():
        lines.append(
            f"{lang:5s} {row['in_scope']:8d} {cell(row, 'top1'):>6s} {cell(row, 'top3'):>6s} "
            f"{cell(row, 'answer_rate'):>8s} {cell(row, 'answered_right'):>6s} {row['out_of_scope']:12d} "
            f"{cell(row, 'abstention'):>9s}"
        )
    lines.append("")
    labels = {
        "top1_en": "top-1 English",
        "top1_zh": "top-1 Chinese",
        "abstention": "out-of-scope abstention",
        "answer_rate": "in-scope answered",
    }
    for name, t in targets.items():
        if t["value"] is None:
            lines.append(f"target {labels[name]} >= {t['target']:.2f}: not measured (no such questions)")
        else:
            lines.append(
                f"target {labels[name]} >= {t['target']:.2f}: {t['value']:.3f} {'met' if t['met'] else 'NOT met'}"
            )
    return "\n".join(lines)


def format_folds(rows: list[dict[str, Any]], k: int) -> str:
    def cell(row: dict[str, Any], lang: str, key: str) -> str:
        value = row["metrics"].get(lang, {}).get(key)
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"{k}-fold check (w and thresholds chosen on {k - 1}/{k} of the file, measured on the rest; "
        "every question held out once):",
        f"{'scoring':26s} {'thresholds':12s} {'top-1 en':>8s} {'top-1 zh':>8s} {'answered':>8s} {'abstained':>9s}",
    ]
    for row in rows:
        lines.append(
            f"{row['scoring']:26s} {row['thresholds']:12s} {cell(row, 'en', 'top1'):>8s} {cell(row, 'zh', 'top1'):>8s} "
            f"{cell(row, 'all', 'answer_rate'):>8s} {cell(row, 'all', 'abstention'):>9s}"
        )
    return "\n".join(lines)


def evaluate(
    kb_path: Path,
    eval_path: Path,
    model: str | None,
    threshold: Threshold | None,
    device: str = "auto",
    precision: str = "auto",
    langs: set[str] | None = None,
    answer_weight: float | None = None,
    folds: int = FOLDS,
) -> dict[str, Any]:
    from pipelines.answers import AnswerSettings, KnowledgeBase, answer_prompt
    from pipelines.encoder import Encoder, EncoderSettings
    from pipelines.language import detect
    from pipelines.registry import resolve_model_dir

    encoder = Encoder(EncoderSettings(model_dir=resolve_model_dir(model), device=device, precision=precision))
    kb = KnowledgeBase.load(AnswerSettings(kb_path, answer_weight=1.0), encoder)  # w > 0: answers embedded too
    questions = [q for q in load_eval(eval_path, {e.id for e in kb.entries}) if not langs or q.lang in langs]
    if not any(q.expected for q in questions):
        raise click.ClickException(f"{eval_path}: no in-scope question in languages {sorted(langs or [])}")
    texts = [q.question for q in questions]
    phrasing, answer = kb.scores(encoder.embed(texts))
    assert answer is not None
    detected = [detect(t).code for t in texts]
    matrix = Matrix(questions, detected, [e.id for e in kb.entries], phrasing.cpu(), answer.cpu())

    weight = choose_weight(matrix) if answer_weight is None else answer_weight
    scored = matrix.scored(weight)
    baseline = measure(matrix.scored(0.0), 0.0)
    report: dict[str, Any] = {
        "encoder": {"name": encoder.name, "version": encoder.version, "precision": encoder.precision},
        "kb": {"path": str(kb_path), "entries": len(kb), "phrasings": len(kb.phrasings)},
        "answer_prompt": answer_prompt(encoder),
        "eval": str(eval_path),
        "langs": sorted({q.lang for q in questions}),
        "questions": len(questions),
        "answer_weight": weight,
        "answer_weight_given": answer_weight is not None,
        "weight_rule": f"the w in {WEIGHTS[0]}..{WEIGHTS[-1]} (step 0.05) with the best top-1 on in-scope questions, "
        "the smallest on ties",
        "top1_phrasings_only": {lang: row["top1"] for lang, row in baseline.items() if "top1" in row},
        "rule": f"highest threshold (3 decimals, rounded down) answering >= {ANSWER_RATE:.0%} of in-scope questions",
        "detected_otherwise": [
            {"question": q.question, "lang": q.lang, "detected": d} for q, d in zip(questions, detected) if d != q.lang
        ],
    }
    tables: dict[str, Threshold] = {"given": threshold} if threshold is not None else {}
    if threshold is None:
        tables |= {"single": fit_threshold(scored, False), "per_language": fit_threshold(scored, True)}
    for name, chosen in tables.items():
        metrics = measure(scored, chosen)
        report[name] = {"threshold": chosen, "metrics": metrics, "targets": check_targets(metrics)}
    report["threshold"] = tables.get("given", tables.get("per_language"))

    mixed = f"w = {answer_weight:g} (given)" if answer_weight is not None else "w chosen per fold"
    report["k_fold"] = {"k": folds, "rows": []}
    for scoring, w in (("phrasings only (w = 0)", 0.0), (mixed, answer_weight)):
        for per_language in (False, True):
            row = k_fold(matrix, w, per_language, folds)
            row |= {"scoring": scoring, "thresholds": "per language" if per_language else "one"}
            report["k_fold"]["rows"].append(row)
    report["errors"] = [error for s in scored if (error := _error(s, threshold_for(report["threshold"], s.detected)))]
    return report


def _error(s: Scored, threshold: float) -> dict[str, Any] | None:
    answered = s.score >= threshold
    if s.item.expected is None:
        kind = "answered out of scope" if answered else None
    elif not answered:
        kind = "no answer"
    else:
        kind = "wrong answer" if s.top[0] != s.item.expected else None
    if kind is None:
        return None
    return {
        "kind": kind,
        "question": s.item.question,
        "expected": s.item.expected,
        "top": s.top[0],
        "score": round(s.score, 4),
        "threshold": threshold,
    }


class ThresholdType(click.ParamType):
    name = "threshold"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Threshold:
        if isinstance(value, float | dict):
            return value
        try:
            return parse_threshold(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


@click.command("eval-answers")
@click.option("--kb", "kb_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--eval",
    "eval_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSONL of {"question", "expected": id or null, "lang"}.',
)
@click.option(
    "--model", default="minilm", show_default=True, help="Encoder: minilm, multilingual or a Hugging Face directory."
)
@click.option(
    "--threshold",
    type=ThresholdType(),
    default=None,
    help="Evaluate this threshold instead of calibrating: 0.87, or en=0.867,zh=0.892,default=0.873.",
)
@click.option(
    "--answer-weight",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Score entries with this w (0: phrasings alone) instead of choosing it.",
)
@click.option("--folds", type=click.IntRange(min=2), default=FOLDS, show_default=True, help="k of the k-fold check.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]), default="auto", show_default=True
)
@click.option("--lang", "langs", default="", help="Only these languages of the eval file, comma-separated (e.g. en).")
@click.option("--errors", "show_errors", is_flag=True, help="Also list every wrong answer, miss and false answer.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the report as JSON.")
def eval_answers(
    kb_path: Path,
    eval_path: Path,
    model: str,
    threshold: Threshold | None,
    answer_weight: float | None,
    folds: int,
    device: str,
    precision: str,
    langs: str,
    show_errors: bool,
    out: Path | None,
) -> None:
    """Answer retrieval on a labelled file: accuracy per language and out-of-scope abstention.

    Chooses the answer weight w (best top-1) unless --answer-weight is given, calibrates one threshold
    and one per detected language (the highest at which >= 90% of in-scope questions get an answer,
    so the most out-of-scope questions get none) unless --threshold is given, reports against the
    targets (top-1 English >= 0.90, top-1 Chinese >= 0.80, abstention >= 0.80), and checks the
    choices on held-out folds.
    """
    from pipelines.registry import ModelNotFoundError

    try:
        wanted = {x.strip() for x in langs.split(",") if x.strip()}
        report = evaluate(kb_path, eval_path, model, threshold, device, precision, wanted, answer_weight, folds)
    except ModelNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    enc, kb = report["encoder"], report["kb"]
    click.echo(
        f"encoder {enc['name']} ({enc['version']}, {enc['precision']}); knowledge base {kb['entries']} entries, "
        f"{kb['phrasings']} phrasings; answers embedded with prompt {report['answer_prompt']!r}"
    )
    how = "given" if report["answer_weight_given"] else f"chosen: {report['weight_rule']}"
    alone = ", ".join(f"{lang} {v:.3f}" for lang, v in report["top1_phrasings_only"].items())
    click.echo(f"answer weight w = {report['answer_weight']:g} ({how}); top-1 with w = 0: {alone}")
    other = Counter(d["detected"] for d in report["detected_otherwise"])
    click.echo(
        f"language detection (picks the threshold): {len(report['detected_otherwise'])} of {report['questions']} "
        f"questions detected otherwise than labelled ({', '.join(f'{c} {n}' for c, n in other.most_common()) or 'none'})"
    )
    titles = {
        "single": f"one threshold (calibrated: {report['rule']})",
        "per_language": f"per-language thresholds (the same rule per detected language with >= {MIN_PER_LANGUAGE} "
        "in-scope questions; default: the one threshold)",
        "given": "threshold given",
    }
    for name in ("single", "per_language", "given"):
        if name in report:
            click.echo(f"\n{titles[name]}: {format_threshold(report[name]['threshold'])}")
            click.echo(format_table(report[name]["metrics"], report[name]["targets"]))
    click.echo("\n" + format_folds(report["k_fold"]["rows"], report["k_fold"]["k"]))
    if not report["answer_weight_given"]:
        chosen = report["k_fold"]["rows"][-1]["weights"]
        click.echo(f"w chosen per fold: {', '.join(f'{w:g}' for w in chosen)}")
    if show_errors:
        click.echo(f"\nerrors at threshold {format_threshold(report['threshold'])}:")
        for e in report["errors"]:
            click.echo(f"  {e['kind']:21s} {e['score']:.3f} expected {e['expected']}, top {e['top']}: {e['question']}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        click.echo(f"\nreport: {out}")
