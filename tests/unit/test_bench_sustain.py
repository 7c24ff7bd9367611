"""The sustainable-rate search's decisions, on synthetic latency: a worker that holds `capacity`
events/s (p99 well under the limit) and falls behind above it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertstream.bench.sustain import RateSearch, find_sustainable

PEAK = 600.0


def worker(capacity: float) -> Any:
    def measure(rate: float) -> dict[str, Any]:
        over = rate > capacity
        return {
            "offered_events_per_s": rate,
            "achieved_events_per_s": min(rate, capacity) if over else rate,
            "p99_ms": 1500.0 if over else 80.0,
        }

    return measure


def test_first_probe_is_the_target_fraction_and_holding_goes_up() -> None:
    search = RateSearch(PEAK)
    assert search.next_rate() == pytest.approx(0.7 * PEAK)
    search.record(420.0, worker(500)(420.0))
    assert search.next_rate() == pytest.approx((420 + PEAK) / 2)


def test_failing_goes_down() -> None:
    search = RateSearch(PEAK)
    search.record(420.0, worker(100)(420.0))
    assert search.next_rate() == pytest.approx(210.0)


def test_capacity_above_the_first_probe() -> None:
    found = find_sustainable(worker(450), PEAK)
    assert [s["offered_events_per_s"] for s in found["steps"]] == [420.0, 510.0, 465.0, 442.5]
    assert found["events_per_s"] == 442.5
    assert found["fraction_of_peak"] == round(442.5 / PEAK, 3)
    assert found["point"]["holds"] and found["bracket"] == [442.5, 465.0]


def test_capacity_below_the_first_probe() -> None:
    found = find_sustainable(worker(250), PEAK)
    assert [s["holds"] for s in found["steps"]] == [False, True, False, False, True]
    assert 250 - 0.05 * PEAK <= found["events_per_s"] <= 250


def test_nothing_holds() -> None:
    found = find_sustainable(worker(0), PEAK, max_steps=4)
    assert len(found["steps"]) == 4
    assert found["events_per_s"] is None and found["fraction_of_peak"] is None and found["point"] is None


def test_everything_holds_up_to_the_peak() -> None:
    found = find_sustainable(worker(10 * PEAK), PEAK)
    assert PEAK * 0.95 <= found["events_per_s"] < PEAK


def test_a_backlog_does_not_hold_even_with_a_low_p99() -> None:
    search = RateSearch(PEAK)
    lagging = {"offered_events_per_s": 420.0, "achieved_events_per_s": 300.0, "p99_ms": 100.0}
    assert not search.record(420.0, lagging)
    assert search.high == 420.0


def test_no_peak_no_search() -> None:
    calls: list[float] = []
    found = find_sustainable(lambda rate: calls.append(rate) or {}, 0.0)
    assert calls == [] and found["events_per_s"] is None


@settings(max_examples=60, deadline=None)
@given(capacity=st.floats(min_value=0, max_value=2 * PEAK), steps=st.integers(min_value=1, max_value=8))
def test_never_claims_more_than_the_worker_holds(capacity: float, steps: int) -> None:
    found = find_sustainable(worker(capacity), PEAK, max_steps=steps)
    assert len(found["steps"]) <= steps
    if found["events_per_s"] is not None:
        assert found["events_per_s"] <= capacity
    low, high = found["bracket"]
    assert low <= high
