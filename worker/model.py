"""Build the models the worker serves: one per pipeline, sharing encoders and heads."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.model import Model
from worker.config import Pipeline, Settings


class ModelSet:
    """Each pipeline's model. Pipelines on the same encoder share one loaded copy of it."""

    def __init__(self, by_pipeline: dict[str, Model]) -> None:
        self.by_pipeline = by_pipeline
        self.distinct = list({id(m): m for m in by_pipeline.values()}.values())

    @classmethod
    def shared(cls, model: Model, pipelines: Iterable[Pipeline]) -> ModelSet:
        """One model for every pipeline (tools and tests)."""
        return cls({p.name: model for p in pipelines})

    def __getitem__(self, pipeline: str) -> Model:
        return self.by_pipeline[pipeline]

    @property
    def name(self) -> str:
        return ",".join(dict.fromkeys(m.name for m in self.distinct))

    @property
    def instances(self) -> int:
        return max(m.instances for m in self.distinct)

    def version(self) -> str:
        if len(self.distinct) == 1:
            return self.distinct[0].version()
        parts = [f"{name}={m.version()}" for name, m in sorted(self.by_pipeline.items())]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]

    def versions(self) -> dict[str, str]:
        return {name: m.version() for name, m in self.by_pipeline.items()}

    def describe(self) -> dict[str, Any]:
        return self.distinct[0].describe()

    def warm_up(self) -> None:
        for model in self.distinct:
            model.warm_up()


def _encoder_ref(settings: Settings, pipeline: Pipeline | None) -> str | Path | None:
    """The pipeline's encoder, else BERTSTREAM_MODEL_DIR, else the default (MiniLM)."""
    if pipeline is not None and pipeline.model:
        return pipeline.model
    return settings.model_dir


def _encoder(settings: Settings, ref: str | Path | None) -> Any:
    import transformers

    from pipelines.encoder import Encoder, EncoderSettings
    from pipelines.registry import resolve_model_dir

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return Encoder(
        EncoderSettings(
            model_dir=resolve_model_dir(ref),
            device=settings.device,
            precision=settings.precision,
            max_windows=settings.max_windows,
            threads=settings.threads,
            instances=settings.model_instances,
        )
    )


def build_model(settings: Settings, heads: list[str], model: str | Path | None = None) -> Model:
    """One encoder and its heads (tools: predict, bench)."""
    from pipelines.classifier import Classifier

    return Classifier.load(_encoder(settings, model or settings.model_dir), list(dict.fromkeys(heads)))


def build_models(settings: Settings, pipelines: list[Pipeline]) -> ModelSet:
    """Every pipeline's model: its encoder (each loaded once), heads and knowledge base.

    Raises ModelNotFoundError (one line, naming the pipeline) when a head does not fit its encoder."""
    from pipelines.classifier import Classifier
    from pipelines.registry import ModelNotFoundError, resolve_model_dir

    encoders: dict[Path, Any] = {}
    models: dict[str, Model] = {}
    for pipeline in pipelines:
        try:
            directory = resolve_model_dir(_encoder_ref(settings, pipeline)).resolve()
            if directory not in encoders:
                encoders[directory] = _encoder(settings, directory)
            encoder = encoders[directory]
            answers = _knowledge_base(pipeline, encoder)
            models[pipeline.name] = Classifier.load(
                encoder, pipeline.model_heads, answers=answers, embedding=pipeline.embedding
            )
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"pipeline {pipeline.name!r}: {exc}") from exc
    return ModelSet(models)


def _knowledge_base(pipeline: Pipeline, encoder: Any) -> Any:
    if pipeline.answers is None:
        return None
    from pipelines.answers import AnswerSettings, KnowledgeBase

    options: dict[str, Any] = {"top_k": pipeline.answer_top_k}
    if pipeline.answer_threshold is not None:
        options["threshold"] = pipeline.answer_threshold
    if pipeline.answer_weight is not None:
        options["answer_weight"] = pipeline.answer_weight
    return KnowledgeBase.load(AnswerSettings(path=pipeline.answers, **options), encoder)


def model_files(settings: Settings, pipelines: list[Pipeline]) -> list[Path]:
    """The files and directories that make up the models: a change there is a reload."""
    from pipelines.registry import resolve_head_dir, resolve_model_dir

    encoders = [resolve_model_dir(_encoder_ref(settings, p)) for p in pipelines]
    heads = [resolve_head_dir(h) for p in pipelines for h in p.model_heads]
    answers = [p.answers for p in pipelines if p.answers is not None]
    return list(dict.fromkeys(encoders + heads + answers))
