"""The layout holds: the runtime loads none of the tools, the command line is the top floor, the
model side never imports the transport, and one module turns Kafka settings into client kwargs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("bertstream",)
TRANSPORT = ("faust", "aiokafka", "kafka", "redis", "worker", "bertstream")


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_runtime_loads_no_tool_and_no_training_code() -> None:
    code = "import json, sys, worker.main, worker.app, worker.model; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
        ).stdout
    )
    assert "worker.app" in loaded and "worker.processor" in loaded
    unwanted = [m for m in loaded if _top(m) in TOOLS or m.startswith("pipelines.training")]
    assert not unwanted, f"the runtime imports {unwanted}"


def test_worker_and_pipelines_never_import_the_tools() -> None:
    for path in _sources("worker", "pipelines"):
        tools = sorted(m for m in _imports(path) if _top(m) in TOOLS)
        assert not tools, f"{path.relative_to(ROOT)} imports {tools}"


def test_pipelines_never_import_the_transport() -> None:
    for path in _sources("pipelines"):
        transport = sorted(m for m in _imports(path) if _top(m) in TRANSPORT)
        assert not transport, f"{path.relative_to(ROOT)} imports {transport}"


def test_nothing_imports_the_command_line() -> None:
    for path in _sources("worker", "pipelines", "bertstream", "tests", "docs"):
        if path == ROOT / "bertstream" / "cli" / "main.py":
            continue
        assert not any(m.startswith("bertstream.cli.main") for m in _imports(path)), path.relative_to(ROOT)


def test_commands_are_attached_by_plain_imports() -> None:
    for path in _sources("bertstream/cli", "worker"):
        assert "importlib" not in {_top(m) for m in _imports(path)}, f"{path.relative_to(ROOT)} uses importlib"


def test_one_module_turns_kafka_settings_into_client_kwargs() -> None:
    """No client is built from a bare bootstrap string, and only worker/connection.py reads the
    security settings (worker/config.py defines and validates them): a tool that did either would
    drop TLS and SASL."""
    owners = {ROOT / "worker" / "connection.py", ROOT / "worker" / "config.py"}
    for path in _sources("worker", "bertstream"):
        if path in owners:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "bootstrap_servers":
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.value.lineno} builds a Kafka client by hand")
            if isinstance(node, ast.Attribute) and node.attr.startswith(("kafka_security", "kafka_sasl", "kafka_ssl")):
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} reads {node.attr}")
