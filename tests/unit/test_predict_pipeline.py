"""`bertstream predict --pipeline`: the worker's own output events, offline (the default model)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bertstream.cli.main import cli
from tests.unit.test_email_input import message


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
    result = CliRunner().invoke(
        cli, ["predict", "--pipeline", "mail", "--pipelines-file", str(pipelines)], input="\n".join(lines) + "\n"
    )
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(docs) == 3  # one line per input line, the events alone on stdout
    assert docs[0]["id"] == "stdin:0:0" and set(docs[0]["results"]) == {"spam", "sentiment"}
    assert docs[0]["results"]["sentiment"]["label"] == "positive"
    assert docs[1]["id"] == "<slides-1@example.com>" and docs[1]["email"]["subject"] == "Slides for Monday"
    assert docs[1]["metadata"] == {"k": 1}
    assert docs[2]["error"] == "invalid_json" and docs[2]["source"]["offset"] == 2


def test_predict_names_an_unknown_pipeline(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["predict", "--pipeline", "nope"], input="hi\n")
    assert result.exit_code == 2 and "unknown pipeline 'nope'" in result.output
