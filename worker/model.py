"""Build the model the worker serves: the encoder and the heads, from the settings."""

from __future__ import annotations

from pathlib import Path

from pipelines.model import Model
from worker.config import Settings


def build_model(settings: Settings, heads: list[str]) -> Model:
    """The encoder and the heads, loaded once and shared by every pipeline of the process."""
    import transformers

    from pipelines.classifier import Classifier
    from pipelines.encoder import Encoder, EncoderSettings

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    encoder = Encoder(
        EncoderSettings(
            model_dir=settings.model_dir,
            device=settings.device,
            precision=settings.precision,
            max_windows=settings.max_windows,
            threads=settings.threads,
            instances=settings.model_instances,
        )
    )
    return Classifier.load(encoder, list(dict.fromkeys(heads)))


def model_files(settings: Settings, heads: list[str]) -> list[Path]:
    """The directories whose files make up the model: a change there is a reload."""
    from pipelines.registry import default_model_dir, resolve_head_dir

    return [settings.model_dir or default_model_dir()] + [resolve_head_dir(h) for h in dict.fromkeys(heads)]
