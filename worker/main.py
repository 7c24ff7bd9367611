"""The `worker` command: load the settings, check the services, load the model, run the Faust app.

`python -m worker` and `bertstream worker` both run it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import click

from worker.config import Settings, load_pipelines, load_settings, select_pipelines
from worker.errors import clear_errors

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Options the worker shares with the tools' commands: one definition, one help text.
brokers_option = click.option(
    "--brokers", help="Kafka bootstrap servers host:port[,...]  [env BERTSTREAM_KAFKA_BROKERS]"
)
pipelines_file_option = click.option(
    "--pipelines-file", type=click.Path(path_type=Path), help="TOML pipelines file  [env BERTSTREAM_PIPELINES_FILE]"
)
model_dir_option = click.option(
    "--model-dir", type=click.Path(path_type=Path), help="Hugging Face model directory  [env BERTSTREAM_MODEL_DIR]"
)


@click.command("worker", context_settings=CONTEXT)
@click.option(
    "--pipeline",
    "-p",
    "pipeline_names",
    multiple=True,
    default=["all"],
    show_default=True,
    help="Pipeline to run (repeatable); 'all' runs every pipeline of the pipelines file.",
)
@brokers_option
@click.option("--redis-url", help="Redis URL, AUTH and TLS included  [env BERTSTREAM_REDIS_URL]")
@pipelines_file_option
@model_dir_option
@click.option("--batch-size", type=int, help="Largest micro-batch  [env BERTSTREAM_BATCH_SIZE]")
@click.option(
    "--batch-window",
    "batch_window_s",
    type=float,
    help="Seconds to wait to fill a batch  [env BERTSTREAM_BATCH_WINDOW_S]",
)
@click.option(
    "--web-port", type=int, help="Port of /healthz, /readyz and /metrics; 0 disables  [env BERTSTREAM_WEB_PORT]"
)
@clear_errors
def command(
    pipeline_names: tuple[str, ...],
    brokers: str | None,
    redis_url: str | None,
    pipelines_file: Path | None,
    model_dir: Path | None,
    batch_size: int | None,
    batch_window_s: float | None,
    web_port: int | None,
) -> None:
    """Run the streaming worker: consume the pipelines' input topics, classify, publish.

    Every setting is also an env var BERTSTREAM_<NAME>; options given here win. Scale out by
    starting more workers with the same group id: Kafka spreads the partitions. Stops gracefully
    on SIGTERM or Ctrl-C (the batch in flight is delivered and committed).
    """
    settings = load_settings(
        kafka_brokers=brokers,
        redis_url=redis_url,
        pipelines_file=pipelines_file,
        model_dir=model_dir,
        batch_size=batch_size,
        batch_window_s=batch_window_s,
        web_port=web_port,
    )
    run(settings, list(pipeline_names))


def run(settings: Settings, pipeline_names: list[str]) -> None:
    """Start the worker and serve until SIGTERM; heavy modules are imported here, not at the top."""
    # SIGHUP reloads the model once the app runs; during the first load it must not kill the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import faust
    import structlog

    from worker.app import WorkerApp
    from worker.logs import setup_logging
    from worker.model import ModelSet, build_models, model_files
    from worker.reload import ModelReloader
    from worker.startup import check_broker, check_device, check_redis

    setup_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("bertstream.worker")
    pipelines = select_pipelines(load_pipelines(settings.pipelines_file), pipeline_names)
    check_device(settings)
    check_broker(settings, [t for p in pipelines for t in [p.input, *p.output_topics]])
    if settings.cache_ttl_s > 0:
        check_redis(settings)
    model = build_models(settings, pipelines)

    def reloader(apply: Callable[[ModelSet], None]) -> ModelReloader:
        return ModelReloader(lambda: build_models(settings, pipelines), lambda: model_files(settings, pipelines), apply)

    app = WorkerApp(settings, pipelines, model, reloader=reloader)
    model.warm_up()
    log.info(
        "worker_starting",
        pipelines=[p.name for p in pipelines],
        model=model.name,
        version=model.version(),
        **model.describe(),
        brokers=settings.kafka_brokers,
        redis=settings.redis_url.get_secret_value(),
        web_port=settings.web_port,
    )
    faust.Worker(
        app.app, loglevel=settings.log_level, override_logging=False, redirect_stdouts=False
    ).execute_from_commandline()


def main() -> None:
    command(prog_name="python -m worker")
