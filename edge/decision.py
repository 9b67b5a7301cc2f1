"""Frame decision: score vs threshold, then k-of-n raise / m-clean clear debouncing.

A single noisy frame must not raise an alarm on a production line, and an alarm must not
flicker off for one clean frame, hence hysteresis in time:
  * raise when at least ``k`` of the last ``n`` frames exceed the threshold;
  * clear after ``m`` consecutive frames at or below it.
A frame "exceeds" when ``score > threshold`` (the rule the calibration assumes).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from edge.manifest import Manifest, ManifestError


class DecisionError(ValueError):
    """Invalid debouncing parameters or threshold."""


def resolve_threshold(manifest: Manifest, category: str | None = None, override: float | None = None) -> float:
    """``--threshold`` if given, else the manifest's per-category (``--category``) or global threshold."""
    if override is not None:
        if not math.isfinite(override):
            raise DecisionError(f"--threshold {override!r}: expected a finite number")
        return float(override)
    try:
        return manifest.threshold(category)
    except ManifestError as e:
        raise DecisionError(f"--category {category}: {e}") from None


@dataclass
class Decision:
    """Outcome for one frame."""

    exceed: bool
    alarm: bool
    event: str | None  # "raise", "clear" or None


class Debouncer:
    """k-of-n raise, m-consecutive-clean clear.  O(n) memory."""

    def __init__(self, raise_k: int = 2, raise_n: int = 3, clear_m: int = 5) -> None:
        if not (1 <= raise_k <= raise_n):
            raise DecisionError(f"--raise-k {raise_k} / --raise-n {raise_n}: expected 1 <= k <= n")
        if clear_m < 1:
            raise DecisionError(f"--clear-m {clear_m}: expected >= 1")
        self.k, self.n, self.m = raise_k, raise_n, clear_m
        self._window: deque[bool] = deque(maxlen=raise_n)
        self._clean_run = 0
        self.alarm = False

    def update(self, exceed: bool) -> str | None:
        """Feed one frame's exceedance; return "raise", "clear" or None."""
        exceed = bool(exceed)
        self._window.append(exceed)
        if not self.alarm:
            if sum(self._window) >= self.k:
                self.alarm, self._clean_run = True, 0
                return "raise"
            return None
        self._clean_run = 0 if exceed else self._clean_run + 1
        if self._clean_run >= self.m:
            self.alarm = False
            # Forget old exceedances so a cleared alarm cannot re-raise on stale history.
            self._window.clear()
            return "clear"
        return None


class Decider:
    """Threshold + debouncer for a stream of scores."""

    def __init__(self, threshold: float, raise_k: int = 2, raise_n: int = 3, clear_m: int = 5) -> None:
        self.threshold = float(threshold)
        self.debouncer = Debouncer(raise_k, raise_n, clear_m)

    def update(self, score: float) -> Decision:
        # Written as 'not <=' so a NaN score (broken model/input) fails safe as an exceedance.
        exceed = not bool(score <= self.threshold)
        event = self.debouncer.update(exceed)
        return Decision(exceed=exceed, alarm=self.debouncer.alarm, event=event)
