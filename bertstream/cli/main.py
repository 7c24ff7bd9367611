"""The `bertstream` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import click

import worker.main
from bertstream.bench.main import bench
from bertstream.cli import training
from bertstream.cli.answers import eval_answers
from bertstream.cli.status import status
from bertstream.encoders.cli import encoders
from worker.config import load_pipelines, load_settings, select_pipelines
from worker.errors import clear_errors
from worker.main import brokers_option, model_dir_option, pipelines_file_option
from worker.model import build_model


@click.group(context_settings=worker.main.CONTEXT)
@click.version_option(package_name="bertstream")
def cli() -> None:
    """bertstream: BERT task heads on Kafka streams, with a Redis result cache.

    Every setting is also an env var BERTSTREAM_<NAME> (e.g. BERTSTREAM_KAFKA_BROKERS,
    BERTSTREAM_REDIS_URL); options given here win.
    """


def _lines(source: TextIO) -> Any:
    for line in source:
        line = line.rstrip("\n")
        if line.strip():
            yield line


@cli.command()
@click.argument("source", type=click.File("r", encoding="utf-8"), default="-")
@click.option("--topic", "-t", required=True, help="Topic to write to, e.g. news.raw")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "text"]),
    default="auto",
    show_default=True,
    help="jsonl: each line is sent as it is; text: each line becomes {\"text\": line}; auto: jsonl if a line starts with '{'.",
)
@brokers_option
@clear_errors
def produce(source: TextIO, topic: str, fmt: str, brokers: str | None) -> None:
    """Send JSONL events or text lines from SOURCE (a file, or - for stdin) to a topic."""
    from bertstream.feed import produce_lines

    settings = load_settings(kafka_brokers=brokers)
    count = produce_lines(settings, topic, _lines(source), fmt)
    click.echo(f"produced {count} events to {topic}", err=True)


@cli.command()
@click.argument("topic")
@brokers_option
@click.option(
    "--from-beginning/--from-end", default=True, show_default=True, help="Start at the earliest or the latest offset."
)
@click.option("--max", "max_events", type=int, default=0, help="Stop after this many events (0: no limit).")
@click.option("--timeout", type=float, default=0, help="Stop after this many seconds without a new event (0: never).")
@clear_errors
def tail(topic: str, brokers: str | None, from_beginning: bool, max_events: int, timeout: float) -> None:
    """Print the events of TOPIC, one per line."""
    from bertstream.feed import tail_topic

    settings = load_settings(kafka_brokers=brokers)
    for value in tail_topic(
        settings, topic, from_beginning=from_beginning, max_events=max_events, idle_timeout_s=timeout
    ):
        click.echo(value.decode("utf-8", errors="replace"))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=9092, show_default=True, help="Port to listen on.")
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve TLS only, with this PEM certificate (chain); needs --tls-key and socat.",
)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="PEM key of --tls-cert.")
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA that signed --tls-cert, for the start-up probe (default: the certificate itself).",
)
@clear_errors
def broker(host: str, port: int, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None) -> None:
    """Run the embedded Kafka-protocol broker (tansu, memory only) in the foreground.

    For development and tests; production uses Apache Kafka. Nothing persists across a restart.
    With --tls-cert/--tls-key a socat front terminates TLS (tansu 0.6.0 cannot); clients then set
    BERTSTREAM_KAFKA_SECURITY_PROTOCOL=SSL and BERTSTREAM_KAFKA_SSL_CAFILE.
    """
    import signal
    import time

    from bertstream.devservices.broker import EmbeddedBroker
    from bertstream.devservices.tls_front import TlsFiles

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    tls = TlsFiles(tls_cert, tls_key, tls_ca or tls_cert) if tls_cert and tls_key else None
    with EmbeddedBroker(host=host, port=port, tls=tls) as running:
        click.echo(f"broker listening on {running.bootstrap}{' (TLS)' if tls else ''} (Ctrl-C to stop)", err=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while running.running():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


@cli.command()
@click.argument("source", type=click.File("r", encoding="utf-8"), default="-")
@click.option(
    "--heads",
    default="sentiment,spam,news_topic,email_topic",
    show_default=True,
    help="Comma-separated heads: names of committed heads or head directories.",
)
@model_dir_option
@click.option("--batch-size", type=int, default=64, show_default=True, help="Texts per model call.")
@click.option(
    "--pipeline",
    "-p",
    "pipeline_name",
    help="Run this pipeline of the pipelines file instead (its heads and input handling, e-mail "
    "included): each line gives the worker's output event or dead letter.",
)
@pipelines_file_option
@clear_errors
def predict(
    source: TextIO,
    heads: str,
    model_dir: Path | None,
    batch_size: int,
    pipeline_name: str | None,
    pipelines_file: Path | None,
) -> None:
    """Classify texts from SOURCE (a file, or - for stdin): JSONL results on stdout, in input order.

    A line that is a JSON object with a "text" field is read as an event; any other line is the text.
    With --pipeline, lines are events in the worker's contract ("text", "email" or "email_b64") or
    plain text, and each output line is the worker's output event. No broker or Redis is needed.
    """
    settings = load_settings(model_dir=model_dir, pipelines_file=pipelines_file)
    if pipeline_name:
        from bertstream.offline import predict_pipeline

        [pipeline] = select_pipelines(load_pipelines(settings.pipelines_file), [pipeline_name])
        predict_pipeline(settings, pipeline, _lines(source), batch_size, click.echo)
        return
    model = build_model(settings, [h.strip() for h in heads.split(",") if h.strip()])
    lines = list(_lines(source))
    for start in range(0, len(lines), batch_size):
        chunk = lines[start : start + batch_size]
        texts = [_text_of(line) for line in chunk]
        for text, prediction in zip(texts, model.run(model.prepare(texts))):
            click.echo(
                json.dumps(
                    {"text": text, "results": prediction.results, "truncated": prediction.truncated}, ensure_ascii=False
                )
            )


def _text_of(line: str) -> str:
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            return line
        if isinstance(doc, dict) and isinstance(doc.get("text"), str):
            return doc["text"]
    return line


@cli.command()
@click.option(
    "--events",
    type=int,
    default=300,
    show_default=True,
    help="English events to feed (news and email, half each); the Chinese texts and support questions come on top.",
)
@click.option("--rows", type=int, default=12, show_default=True, help="Rows of the results table per pipeline.")
@clear_errors
def demo(events: int, rows: int) -> None:
    """Run everything on embedded defaults: broker, Redis, model and heads, a worker, a feed.

    Uses BERTSTREAM_KAFKA_BROKERS / BERTSTREAM_REDIS_URL when set, otherwise starts its own.
    Prints a table of results and a summary, then stops everything it started.
    """
    from bertstream.demo.run import run_demo

    run_demo(events=events, rows=rows)


for command in [worker.main.command, *training.COMMANDS, bench, status, eval_answers, encoders]:
    cli.add_command(command)


def main() -> None:
    cli(prog_name="bertstream")


if __name__ == "__main__":
    main()
