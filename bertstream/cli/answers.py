"""`bertstream eval-answers`: answer retrieval measured on a labelled file, with the threshold calibrated.

The eval file is JSONL: `{"question": str, "expected": <KB id> | null, "lang": str}`; null marks an
out-of-scope question, which should get no answer. Calibration rule: the highest threshold (rounded
down to 3 decimals) at which at least 90% of the in-scope questions still get an answer; the
out-of-scope abstention only grows with the threshold, so this is the one that maximizes it under
that bound.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

ANSWER_RATE = 0.90  # share of in-scope questions that must get an answer at the calibrated threshold
TARGETS = {"top1_en": 0.90, "top1_zh": 0.80, "abstention": 0.80, "answer_rate": ANSWER_RATE}


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


def measure(scored: list[Scored], threshold: float) -> dict[str, Any]:
    """Per language and overall: top-1/top-3 accuracy, answer rate, right answers given; abstention out of scope."""
    langs = sorted({s.item.lang for s in scored})
    out: dict[str, Any] = {}
    for lang in [*langs, "all"]:
        group = [s for s in scored if lang in ("all", s.item.lang)]
        inside = [s for s in group if s.item.expected]
        outside = [s for s in group if not s.item.expected]
        row: dict[str, Any] = {"in_scope": len(inside), "out_of_scope": len(outside)}
        if inside:
            answered = [s for s in inside if s.score >= threshold]
            row |= {
                "top1": _share(inside, lambda s: s.top[0] == s.item.expected),
                "top3": _share(inside, lambda s: s.item.expected in s.top[:3]),
                "answer_rate": round(len(answered) / len(inside), 4),
                "answered_right": _share(inside, lambda s: s.score >= threshold and s.top[0] == s.item.expected),
            }
        if outside:
            row["abstention"] = _share(outside, lambda s: s.score < threshold)
        out[lang] = row
    return out


def two_fold(scored: list[Scored]) -> dict[str, float]:
    """Calibrate on every other question and measure on the rest, both ways: the answer rate and
    abstention to expect on new questions (the calibrated figures are measured on their own data)."""
    rates, abstentions = [], []
    for half in (0, 1):
        fit = [s for i, s in enumerate(scored) if i % 2 == half]
        held = [s for i, s in enumerate(scored) if i % 2 != half]
        row = measure(held, calibrate([s.score for s in fit if s.item.expected]))["all"]
        rates.append(row.get("answer_rate", 0.0))
        abstentions.append(row.get("abstention", 0.0))
    return {"answer_rate": round(sum(rates) / 2, 4), "abstention": round(sum(abstentions) / 2, 4)}


def _share(items: list[Scored], test: Any) -> float:
    return round(sum(1 for s in items if test(s)) / len(items), 4)


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


def evaluate(
    kb_path: Path,
    eval_path: Path,
    model: str | None,
    threshold: float | None,
    device: str = "auto",
    precision: str = "auto",
    langs: set[str] | None = None,
) -> dict[str, Any]:
    from pipelines.answers import AnswerSettings, KnowledgeBase
    from pipelines.encoder import Encoder, EncoderSettings
    from pipelines.registry import resolve_model_dir

    encoder = Encoder(EncoderSettings(model_dir=resolve_model_dir(model), device=device, precision=precision))
    kb = KnowledgeBase.load(AnswerSettings(kb_path), encoder)
    questions = [q for q in load_eval(eval_path, {e.id for e in kb.entries}) if not langs or q.lang in langs]
    if not any(q.expected for q in questions):
        raise click.ClickException(f"{eval_path}: no in-scope question in languages {sorted(langs or [])}")
    hits = kb.search(encoder.embed([q.question for q in questions]), k=3)
    scored = [Scored(q, [kb.entries[i].id for i in h.entries], h.scores[0]) for q, h in zip(questions, hits)]
    calibrated = calibrate([s.score for s in scored if s.item.expected])
    chosen = calibrated if threshold is None else threshold
    metrics = measure(scored, chosen)
    return {
        "encoder": {"name": encoder.name, "version": encoder.version, "precision": encoder.precision},
        "kb": {"path": str(kb_path), "entries": len(kb), "phrasings": len(kb.phrasings)},
        "eval": str(eval_path),
        "langs": sorted({q.lang for q in questions}),
        "threshold": chosen,
        "calibrated_threshold": calibrated,
        "rule": f"highest threshold (3 decimals, rounded down) answering >= {ANSWER_RATE:.0%} of in-scope questions",
        "metrics": metrics,
        "targets": check_targets(metrics),
        "two_fold": two_fold(scored),
        "errors": [error for s in scored if (error := _error(s, chosen))],
    }


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
    }


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
    type=click.FloatRange(-1.0, 1.0),
    default=None,
    help="Evaluate this threshold instead of calibrating.",
)
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
    threshold: float | None,
    device: str,
    precision: str,
    langs: str,
    show_errors: bool,
    out: Path | None,
) -> None:
    """Answer retrieval on a labelled file: accuracy per language and out-of-scope abstention.

    Calibrates the threshold (the highest at which >= 90% of in-scope questions get an answer, so
    the most out-of-scope questions get none) unless --threshold is given, and reports against the
    targets: top-1 English >= 0.90, top-1 Chinese >= 0.80, abstention >= 0.80.
    """
    from pipelines.registry import ModelNotFoundError

    try:
        wanted = {x.strip() for x in langs.split(",") if x.strip()}
        report = evaluate(kb_path, eval_path, model, threshold, device, precision, wanted)
    except ModelNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    enc, kb = report["encoder"], report["kb"]
    click.echo(
        f"encoder {enc['name']} ({enc['version']}, {enc['precision']}); knowledge base {kb['entries']} entries, "
        f"{kb['phrasings']} phrasings"
    )
    how = "given" if threshold is not None else f"calibrated: {report['rule']}"
    click.echo(f"threshold {report['threshold']:.3f} ({how}; calibrated {report['calibrated_threshold']:.3f})\n")
    click.echo(format_table(report["metrics"], report["targets"]))
    folds = report["two_fold"]
    click.echo(
        f"two-fold check (calibrated on every other question, measured on the rest): "
        f"answered {folds['answer_rate']:.3f}, out-of-scope abstention {folds['abstention']:.3f}"
    )
    if show_errors:
        click.echo("\nerrors:")
        for e in report["errors"]:
            click.echo(f"  {e['kind']:21s} {e['score']:.3f} expected {e['expected']}, top {e['top']}: {e['question']}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        click.echo(f"\nreport: {out}")
