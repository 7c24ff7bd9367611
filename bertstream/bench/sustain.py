"""The sustainable rate: the highest paced rate the worker holds with p99 latency within a limit.

A short bisection over offered rates between 0 and the burst peak. A rate holds when its p99 is
within the limit and the worker kept up (achieved >= `keep_up` x offered). The first probe is at
`start` x peak (the target's threshold, so that one step already says which side of it we are on).

Why short steps are enough: when the offered rate exceeds what the worker holds by a fraction x, the
backlog after T seconds is x*T seconds of work, and the last events wait about that long; with
T = 10 s an overload of 2.5% already puts the tail at 250 ms. Below the sustainable rate the queue
does not grow, so a longer step would not change the verdict, only its sample size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RateSearch:
    peak: float  # the burst peak, events/s
    limit_ms: float = 250.0
    start: float = 0.7  # first probe, as a fraction of the peak
    max_steps: int = 5
    resolution: float = 0.05  # stop when the bracket is narrower than this fraction of the peak
    keep_up: float = 0.9
    steps: list[dict[str, Any]] = field(default_factory=list)
    low: float = 0.0  # the highest rate that held
    high: float = 0.0  # the lowest rate that did not (the peak until one fails)

    def __post_init__(self) -> None:
        self.high = self.peak

    def holds(self, point: dict[str, Any]) -> bool:
        offered = point["offered_events_per_s"]
        return point["p99_ms"] <= self.limit_ms and point["achieved_events_per_s"] >= self.keep_up * offered

    def next_rate(self) -> float | None:
        """The next rate to offer, or None when the search is done."""
        if self.peak <= 0 or len(self.steps) >= self.max_steps:
            return None
        if not self.steps:
            return max(1.0, self.start * self.peak)
        if self.high - self.low <= self.resolution * self.peak:
            return None
        return (self.low + self.high) / 2

    def record(self, rate: float, point: dict[str, Any]) -> bool:
        ok = self.holds(point)
        if ok:
            self.low = max(self.low, rate)
        else:
            self.high = min(self.high, rate)
        self.steps.append({**point, "offered_events_per_s": round(rate, 2), "holds": ok})
        return ok

    def result(self) -> dict[str, Any]:
        held = [s for s in self.steps if s["holds"]]
        best = max(held, key=lambda s: s["offered_events_per_s"]) if held else None
        rate = best["offered_events_per_s"] if best else None
        return {
            "events_per_s": rate,
            "burst_peak_events_per_s": self.peak,
            "fraction_of_peak": round(rate / self.peak, 3) if rate and self.peak else None,
            "p99_limit_ms": self.limit_ms,
            "bracket": [round(self.low, 2), round(self.high, 2)],
            "point": best,
            "steps": self.steps,
        }


def find_sustainable(
    measure: Callable[[float], dict[str, Any]],
    peak: float,
    log: Callable[[str], None] = lambda m: None,
    **search: Any,
) -> dict[str, Any]:
    """Drive a RateSearch with `measure(rate)` (a paced run: p99_ms, achieved_events_per_s)."""
    s = RateSearch(peak, **search)
    while (rate := s.next_rate()) is not None:
        point = measure(rate)
        ok = s.record(rate, point)
        log(
            f"   {rate:,.0f}/s: p99 {point['p99_ms']:.0f} ms, achieved {point['achieved_events_per_s']:,.0f}/s -> {'holds' if ok else 'does not hold'}"
        )
    return s.result()
