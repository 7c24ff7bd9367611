"""Configuration: BERTSTREAM_* env vars over defaults, one-line errors, the packaged pipelines file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.config import (
    DEFAULT_PIPELINES_FILE,
    ConfigError,
    Pipeline,
    Route,
    load_pipelines,
    load_settings,
    select_pipelines,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No BERTSTREAM_* from the machine leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("BERTSTREAM_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults() -> None:
    s = load_settings()
    assert s.kafka_brokers == "127.0.0.1:9092"
    assert s.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert s.pipelines_file == DEFAULT_PIPELINES_FILE
    assert s.batch_size == 64
    assert s.web_host == "127.0.0.1"  # loopback by default
    assert s.kafka_security_protocol == "PLAINTEXT"


def test_env_overrides_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("BERTSTREAM_KAFKA_BROKERS", " broker-a:9092, broker-b:9093 ")
    clean_env.setenv("BERTSTREAM_REDIS_URL", "rediss://user:s3cret@cache:6380/2")
    clean_env.setenv("BERTSTREAM_BATCH_SIZE", "128")
    clean_env.setenv("BERTSTREAM_BATCH_WINDOW_S", "0.25")
    clean_env.setenv("BERTSTREAM_CACHE_TTL_S", "0")
    clean_env.setenv("BERTSTREAM_PIPELINES_FILE", str(tmp_path / "p.toml"))
    clean_env.setenv("BERTSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    clean_env.setenv("BERTSTREAM_KAFKA_SASL_PASSWORD", "hunter2")
    s = load_settings()
    assert s.kafka_brokers == "broker-a:9092,broker-b:9093"
    assert s.redis_url.get_secret_value() == "rediss://user:s3cret@cache:6380/2"
    assert s.batch_size == 128
    assert s.batch_window_s == 0.25
    assert s.cache_ttl_s == 0
    assert s.pipelines_file == tmp_path / "p.toml"
    assert s.kafka_security_protocol == "SASL_SSL"
    assert s.kafka_sasl_password.get_secret_value() == "hunter2"
    # Secrets never show in the settings' repr (which ends up in logs and tracebacks).
    assert "s3cret" not in repr(s) and "hunter2" not in repr(s)


def test_explicit_overrides_beat_env_and_none_is_ignored(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BERTSTREAM_BATCH_SIZE", "128")
    assert load_settings(batch_size=8).batch_size == 8
    assert load_settings(batch_size=None).batch_size == 128


@pytest.mark.parametrize(
    "var,value",
    [
        ("BERTSTREAM_BATCH_SIZE", "0"),
        ("BERTSTREAM_BATCH_SIZE", "many"),
        ("BERTSTREAM_BATCH_WINDOW_S", "-1"),
        ("BERTSTREAM_KAFKA_BROKERS", "no-port-here"),
        ("BERTSTREAM_KAFKA_BROKERS", " , "),
        ("BERTSTREAM_KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("BERTSTREAM_WEB_PORT", "70000"),
        ("BERTSTREAM_CACHE_TTL_S", "-5"),
        ("BERTSTREAM_LOG_FORMAT", "xml"),
        ("BERTSTREAM_MAX_EVENT_BYTES", "10"),
    ],
)
def test_bad_value_is_one_line_naming_the_var(clean_env: pytest.MonkeyPatch, var: str, value: str) -> None:
    clean_env.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert var in message
    assert message.startswith(f"bad setting {var}:")


def test_packaged_pipelines() -> None:
    pipelines = load_pipelines(DEFAULT_PIPELINES_FILE)
    assert {"news", "email"} <= set(pipelines)
    news, email = pipelines["news"], pipelines["email"]
    assert (news.input, news.output, news.dead_letter) == ("news.raw", "news.enriched", "news.dead-letter")
    assert news.routes == []
    assert (email.input, email.output, email.dead_letter) == ("email.raw", "email.classified", "email.dead-letter")
    assert Route(head="spam", label="spam", topic="email.spam") in email.routes
    assert "spam" in email.tasks
    assert set(email.output_topics) == {"email.classified", "email.dead-letter", "email.spam", "multilingual.raw"}
    assert set(news.output_topics) == {"news.enriched", "news.dead-letter", "multilingual.raw"}
    multilingual, support = pipelines["multilingual"], pipelines["support"]
    assert news.languages == email.languages == ["en"]
    assert news.other_languages_topic == email.other_languages_topic == multilingual.input  # passed on, not dropped
    assert multilingual.model == support.model == "multilingual" and not multilingual.languages
    assert support.answers is not None and support.answers.is_file()
    assert support.unanswered == "support.unanswered"
    # Whole e-mails get the head trained on whole e-mails; bare texts the one trained on both.
    assert email.email_heads == {"spam": "spam_email"} and email.model_heads == ["spam", "sentiment", "spam_email"]
    answers = {"spam": {"label": "ham"}, "spam_email": {"label": "spam"}, "sentiment": {"label": "neutral"}}
    assert email.results_for(answers, email=True) == {"spam": {"label": "spam"}, "sentiment": {"label": "neutral"}}
    assert email.results_for(answers, email=False) == {"spam": {"label": "ham"}, "sentiment": {"label": "neutral"}}


def test_route_for() -> None:
    email = load_pipelines(DEFAULT_PIPELINES_FILE)["email"]
    spam = {"spam": {"label": "spam", "score": 0.9}, "sentiment": {"label": "neutral"}}
    ham = {"spam": {"label": "ham", "score": 0.9}, "sentiment": {"label": "neutral"}}
    assert email.route_for(spam) == "email.spam"
    assert email.route_for(ham) == "email.classified"
    assert email.route_for({}) == "email.classified"  # no spam result: the plain output


def test_first_matching_route_wins() -> None:
    p = Pipeline(
        name="p",
        input="in",
        output="out",
        dead_letter="dl",
        heads=["spam", "sentiment"],
        routes=[
            Route(head="sentiment", label="negative", topic="angry"),
            Route(head="spam", label="spam", topic="junk"),
        ],
    )
    assert p.route_for({"spam": {"label": "spam"}, "sentiment": {"label": "negative"}}) == "angry"
    assert p.route_for({"spam": {"label": "spam"}, "sentiment": {"label": "positive"}}) == "junk"


def test_head_paths_give_task_names() -> None:
    p = Pipeline(name="p", input="i", output="o", dead_letter="d", heads=["/models/heads/spam", "sentiment"])
    assert p.tasks == ["spam", "sentiment"]


def test_select_pipelines() -> None:
    pipelines = load_pipelines(DEFAULT_PIPELINES_FILE)
    assert [p.name for p in select_pipelines(pipelines, ["email"])] == ["email"]
    assert {p.name for p in select_pipelines(pipelines, ["all"])} == set(pipelines)
    assert {p.name for p in select_pipelines(pipelines, [])} == set(pipelines)


def test_unknown_pipeline() -> None:
    pipelines = load_pipelines(DEFAULT_PIPELINES_FILE)
    with pytest.raises(ConfigError) as info:
        select_pipelines(pipelines, ["news", "sports"])
    message = str(info.value)
    assert "'sports'" in message and "news" in message and "email" in message
    assert "\n" not in message


def test_malformed_toml(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.toml"
    path.write_text('[pipelines.news\ninput = "news.raw"\n')
    with pytest.raises(ConfigError) as info:
        load_pipelines(path)
    assert "not valid TOML" in str(info.value)
    assert str(path) in str(info.value)


def test_missing_pipelines_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BERTSTREAM_PIPELINES_FILE"):
        load_pipelines(tmp_path / "nope.toml")


def test_file_without_pipelines(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('title = "nothing"\n')
    with pytest.raises(ConfigError, match="no \\[pipelines"):
        load_pipelines(path)


@pytest.mark.parametrize(
    "body,expect",
    [
        ('input = "i"\noutput = "o"\nheads = ["spam"]\n', "dead_letter"),  # missing field
        ('input = "i"\noutput = "o"\ndead_letter = "d"\nheads = []\n', "heads"),  # no heads
        ('input = "i"\noutput = "o"\ndead_letter = "d"\nheads = ["spam"]\nroutes = [{ head = "spam" }]\n', "routes"),
        (
            'input = "i"\noutput = "o"\ndead_letter = "d"\nheads = ["s"]\nlanguages = ["en"]\nother_languages = "route"\n',
            "other_languages_topic",
        ),
        ('input = "i"\noutput = "o"\ndead_letter = "d"\nheads = ["s"]\nother_languages = "drop"\n', "other_languages"),
        ('input = "i"\noutput = "o"\ndead_letter = "d"\nheads = ["s"]\nunanswered = "u"\n', "unanswered needs answers"),
        ('input = "i"\noutput = "o"\ndead_letter = "d"\nanswers = "kb.jsonl"\nanswer_top_k = 0\n', "answer_top_k"),
        ('input = "i"\noutput = "o"\ndead_letter = "d"\nanswers = "kb.jsonl"\nanswer_threshold = 1.5\n', "cosine"),
        ('input = "i"\noutput = "o"\ndead_letter = "d"\nanswers = "k"\nanswer_threshold = { en = 0.8 }\n', "default"),
        ('input = "i"\noutput = "o"\ndead_letter = "d"\nheads = ["s"]\nemail_heads = { spam = "x" }\n', "not a task"),
        ('input = "i"\noutput = "o"\ndead_letter = "d"\nheads = ["s", "t"]\nemail_heads = { s = "t" }\n', "answer as"),
    ],
)
def test_invalid_pipeline_table(tmp_path: Path, body: str, expect: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[pipelines.bad]\n" + body)
    with pytest.raises(ConfigError) as info:
        load_pipelines(path)
    message = str(info.value)
    assert "'bad'" in message and expect in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("BERTSTREAM_LOG_LEVEL", "verbose"),
        ("BERTSTREAM_DEVICE", "gpu"),
        ("BERTSTREAM_DEVICE", "cuda:x"),
        ("BERTSTREAM_PRECISION", "fp64"),
        ("BERTSTREAM_KAFKA_SASL_MECHANISM", "KERBEROS"),
        ("BERTSTREAM_KAFKA_BROKERS", "SASL_SSL://b:9093"),
        ("BERTSTREAM_KAFKA_BROKERS", "http://b:9093"),
        ("BERTSTREAM_KAFKA_BROKERS", "b:port"),
        ("BERTSTREAM_KAFKA_BROKERS", "b:99999"),
        ("BERTSTREAM_KAFKA_BROKERS", ":9092"),
    ],
)
def test_settings_that_crashed_later_fail_at_load(clean_env: pytest.MonkeyPatch, var: str, value: str) -> None:
    """Each of these once passed validation and ended in a traceback after start-up began."""
    test_bad_value_is_one_line_naming_the_var(clean_env, var, value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("kafka://h1:9092", "h1:9092"),
        ("kafka://h1:9092;kafka://h2:9093", "h1:9092,h2:9093"),
        ("h1:9092;h2:9093", "h1:9092,h2:9093"),
        (" h1:9092 , h2:9093 ", "h1:9092,h2:9093"),
        ("[::1]:9092", "[::1]:9092"),
    ],
)
def test_broker_lists_in_the_forms_users_write(clean_env: pytest.MonkeyPatch, value: str, expected: str) -> None:
    clean_env.setenv("BERTSTREAM_KAFKA_BROKERS", value)
    assert load_settings().kafka_brokers == expected


def test_log_level_is_case_insensitive(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BERTSTREAM_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


def test_sasl_needs_a_sasl_protocol(clean_env: pytest.MonkeyPatch) -> None:
    """With PLAINTEXT the start-up check would connect without SASL while Faust used SASL_PLAINTEXT."""
    clean_env.setenv("BERTSTREAM_KAFKA_SASL_MECHANISM", "PLAIN")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message and "BERTSTREAM_KAFKA_SECURITY_PROTOCOL" in message and "SASL_PLAINTEXT" in message
    clean_env.setenv("BERTSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    assert load_settings().kafka_sasl_mechanism == "PLAIN"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this host has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_stops_before_anything_heavy(clean_env: pytest.MonkeyPatch, device: str) -> None:
    from worker.errors import StartupError
    from worker.startup import check_device

    clean_env.setenv("BERTSTREAM_DEVICE", device)
    with pytest.raises(StartupError) as info:
        check_device(load_settings())
    assert "\n" not in str(info.value) and "BERTSTREAM_DEVICE" in str(info.value)
    check_device(load_settings(device="cpu"))
    check_device(load_settings(device="auto"))


def test_replication_factor_defaults_to_the_brokers_own(clean_env: pytest.MonkeyPatch) -> None:
    """Created topics used a hard-coded factor of 1: every send fails where min.insync.replicas is 2."""
    assert load_settings().kafka_replication_factor == -1  # -1: the broker's default.replication.factor
    clean_env.setenv("BERTSTREAM_KAFKA_REPLICATION_FACTOR", "3")
    assert load_settings().kafka_replication_factor == 3
    test_bad_value_is_one_line_naming_the_var(clean_env, "BERTSTREAM_KAFKA_REPLICATION_FACTOR", "0")


def test_answering_pipeline_needs_no_heads_and_finds_its_knowledge_base_beside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[pipelines.support]\ninput = "q"\noutput = "a"\ndead_letter = "d"\nmodel = "multilingual"\n'
        'answers = "kb/support.jsonl"\nunanswered = "humans"\nlanguages = ["en", "zh"]\n'
        'other_languages = "route"\nother_languages_topic = "elsewhere"\n'
    )
    support = load_pipelines(path)["support"]
    assert support.heads == [] and support.model == "multilingual"
    assert support.answers == tmp_path / "kb" / "support.jsonl"
    assert support.output_topics == ["a", "d", "humans", "elsewhere"]
    assert support.serves("zh") and not support.serves("fr")
    assert support.route_for({}, {"answer": None}) == "humans"
    assert support.route_for({}, {"answer": {"id": "x"}}) == "a"
