"""The long fault tests run only with `-m faults` (`make faults`); a plain `pytest` skips them."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: long fault tests (10,000-event crashes, 30 s outages); run with -m faults"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "faults" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="long fault test: run `make faults` (pytest -m faults tests/faults)")
    for item in items:
        if item.get_closest_marker("faults"):
            item.add_marker(skip)
