"""The summary ``edge-run`` returns (and logs) when its frame loop ends.

Memory stays flat however long the run: scores are summarised as running min/max/mean and only
the last ``MAX_EVENTS_IN_SUMMARY`` alarm events are kept.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from edge.jsonsafe import json_safe
from edge.loop import StopReason
from edge.sources import Frame

MAX_EVENTS_IN_SUMMARY = 1000


class ScoreStats:
    """Running min/max/mean of scores (no per-frame storage)."""

    def __init__(self) -> None:
        self.n, self.mean, self.min, self.max = 0, 0.0, math.inf, -math.inf

    def add(self, x: float) -> None:
        if not math.isfinite(x):
            return
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.min, self.max = min(self.min, x), max(self.max, x)

    def to_dict(self) -> dict[str, float | None]:
        if not self.n:
            return {"min": None, "max": None, "mean": None}
        return {"min": self.min, "max": self.max, "mean": self.mean}


class RunTally:
    """What the loop accumulates for the summary: score statistics and the last alarm events."""

    def __init__(self) -> None:
        self.scores = ScoreStats()
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS_IN_SUMMARY)

    def add(self, frame: Frame, score: float, event: str | None) -> None:
        """One scored frame; ``event`` is its debounced "raise"/"clear" (or None)."""
        self.scores.add(score)
        if event is not None:
            self.events.append({"frame": frame.index, "event": event, "score": json_safe(score), "path": frame.path})


@dataclass(frozen=True)
class RunSummary:
    """Counters, score and latency statistics, alarm events and why the loop stopped."""

    stopped_by: StopReason
    frames: int
    corrupt: int
    dropped: int
    reconnects: int
    stalls: int
    alarms: int
    sink_errors: int
    alarm_active: bool
    threshold: float
    category: str | None
    events: list[dict[str, Any]]
    score: dict[str, float | None]
    latency_ms: dict[str, float | None]
    fps: float | None
    duration_s: float
    engine: dict[str, Any]
    source: str
    sinks: dict[str, dict[str, int]]

    @classmethod
    def collect(cls, *, stopped_by: StopReason, tally: RunTally, counters: dict[str, Any], alarm_active: bool,
                threshold: float, category: str | None, fps: float | None, duration_s: float,
                engine: dict[str, Any], source: str, sinks: dict[str, dict[str, int]]) -> RunSummary:
        """Summary from the loop's tally, a ``RuntimeCounters.snapshot()`` (``counters``) and the run's facts."""
        return cls(stopped_by=stopped_by, frames=counters["frames"], corrupt=counters["corrupt"],
                   dropped=counters["dropped"], reconnects=counters["reconnects"], stalls=counters.get("stalls", 0),
                   alarms=counters["alarms"], sink_errors=counters["sink_errors"], alarm_active=alarm_active,
                   threshold=threshold, category=category, events=list(tally.events), score=tally.scores.to_dict(),
                   latency_ms=counters["latency_ms"], fps=fps, duration_s=duration_s, engine=engine, source=source,
                   sinks=sinks)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (``stopped_by`` as its string), what ``edge.runner.run`` returns."""
        return {**asdict(self), "stopped_by": self.stopped_by.value}
