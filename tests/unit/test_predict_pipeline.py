"""`bertstream predict --pipeline`: the worker's own output events, offline (the default model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.unit.test_email_input import message

ROOT = Path(__file__).resolve().parents[2]


def bertstream(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it (nothing imports the CLI module)."""
    return subprocess.run(
        [sys.executable, "-m", "bertstream.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_predict_runs_a_pipeline_with_its_input_handling(tmp_path: Path) -> None:
    pipelines = tmp_path / "pipelines.toml"
    pipelines.write_text(
        '[pipelines.mail]\ninput = "in"\noutput = "out"\ndead_letter = "dead"\nheads = ["spam", "sentiment"]\n'
    )
    lines = [
        "Thank you, the party was wonderful!",
        json.dumps({"email": message().as_string(), "metadata": {"k": 1}}),
        '{"text": ',
    ]
    result = bertstream(
        "predict", "--pipeline", "mail", "--pipelines-file", str(pipelines), stdin="\n".join(lines) + "\n"
    )
    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(docs) == 3  # one line per input line, the events alone on stdout
    assert docs[0]["id"] == "stdin:0:0" and set(docs[0]["results"]) == {"spam", "sentiment"}
    assert docs[0]["results"]["sentiment"]["label"] == "positive"
    assert docs[1]["id"] == "<slides-1@example.com>" and docs[1]["email"]["subject"] == "Slides for Monday"
    assert docs[1]["metadata"] == {"k": 1}
    assert docs[2]["error"] == "invalid_json" and docs[2]["source"]["offset"] == 2


def test_predict_names_an_unknown_pipeline(tmp_path: Path) -> None:
    result = bertstream("predict", "--pipeline", "nope", stdin="hi\n")
    assert result.returncode == 2 and "unknown pipeline 'nope'" in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback
