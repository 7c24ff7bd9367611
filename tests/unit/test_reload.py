"""Hot reload against a fake model: a half-copied head never crashes the worker or mixes versions."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from pipelines.registry import ModelNotFoundError
from worker.reload import ModelReloader


class Loaded:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def warm_up(self) -> None:
        pass

    def version(self) -> str:
        return self.tag


def head_dir(tmp_path: Path) -> Path:
    head = tmp_path / "heads" / "spam"
    head.mkdir(parents=True)
    (head / "head.json").write_text("{}")
    return head


def test_a_head_removed_mid_copy_keeps_the_old_model(tmp_path: Path) -> None:
    head = head_dir(tmp_path)
    applied: list[str] = []

    def directories() -> list[Path]:
        if not head.is_dir():  # what resolve_head_dir raises for a missing head
            raise ModelNotFoundError(f"head {head} not found")
        return [head]

    reloader = ModelReloader(lambda: Loaded("v2"), directories, lambda m: applied.append(m.tag))

    async def scenario() -> None:
        shutil.rmtree(head)  # `rm -rf` then `cp -r`: the check runs in between
        await reloader.check_files()  # raised ModelNotFoundError: an exception in a Faust timer stops the app
        assert applied == []
        head_dir(tmp_path)
        (head / "model.safetensors").write_bytes(b"new")
        await reloader.check_files()
        assert applied == ["v2"]

    asyncio.run(scenario())


def test_files_changed_during_a_load_are_loaded_again(tmp_path: Path) -> None:
    """The fingerprint is taken before the load: a copy still running during the load is not
    served under a version read later, and the next check loads the finished files."""
    head = head_dir(tmp_path)
    loads = {"n": 0}
    applied: list[str] = []

    def load() -> Loaded:
        loads["n"] += 1
        if loads["n"] == 1:
            (head / "head.json").write_text('{"half": "copied"}')  # the copy goes on during the load
        return Loaded(f"v{loads['n'] + 1}")

    reloader = ModelReloader(load, lambda: [head], lambda m: applied.append(m.tag))

    async def scenario() -> None:
        (head / "model.safetensors").write_bytes(b"new")
        assert await reloader.reload("files changed") is False
        assert applied == []
        await reloader.check_files()  # the files differ from the last good load: load again
        assert applied == ["v3"]
        await reloader.check_files()  # nothing changed since
        assert applied == ["v3"]

    asyncio.run(scenario())
