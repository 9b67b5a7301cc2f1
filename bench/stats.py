"""Latency statistics of a benchmark: percentiles, frames per second, throughput and ratios.

Percentiles use linear interpolation between order statistics (Hyndman & Fan 1996, definition 7 —
numpy's and Excel's default): for sorted x_0..x_{n−1}, P(q) = x_⌊h⌋ + (h − ⌊h⌋)(x_⌊h⌋+1 − x_⌊h⌋)
with h = (n − 1)·q/100.  FPS is 1000 / median latency (one frame in flight, as the edge runner
processes frames), not runs / total time, so one slow outlier does not move it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edge import accuracy


class StatsError(ValueError):
    """Statistics asked of an empty sample or with an impossible parameter."""


def time_median_ms(fn: Callable[[], Any], runs: int, warmup: int = 2) -> float:
    """Median wall time of ``runs`` calls of ``fn`` after ``warmup`` untimed ones, in milliseconds (micro-benchmarks:
    the GEMM peak, the resize policies)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return percentile(times, 50.0)


def percentile(samples: Sequence[float], q: float) -> float:
    """q-th percentile (0 ≤ q ≤ 100) by linear interpolation (Hyndman & Fan definition 7)."""
    if not samples:
        raise StatsError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise StatsError(f"percentile q={q}: expected 0 ≤ q ≤ 100")
    xs = sorted(float(x) for x in samples)
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-call latencies in milliseconds."""

    n: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @property
    def fps(self) -> float:
        return fps(self.median_ms)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "fps": self.fps}


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    """Median / p90 / p99 / mean / min / max of latencies in ms."""
    if not samples_ms:
        raise StatsError("no latency samples (runs must be ≥ 1)")
    xs = [float(x) for x in samples_ms]
    return LatencyStats(n=len(xs), median_ms=percentile(xs, 50), p90_ms=percentile(xs, 90),
                        p99_ms=percentile(xs, 99), mean_ms=sum(xs) / len(xs), min_ms=min(xs), max_ms=max(xs))


def fps(median_ms: float) -> float:
    """Frames per second of a one-frame-at-a-time loop: 1000 / median latency."""
    if median_ms <= 0:
        raise StatsError(f"latency {median_ms} ms: expected a positive value")
    return 1000.0 / median_ms


def speedup(reference_ms: float | None, ms: float | None) -> float | None:
    """How many times faster than the reference (reference / ms); None if either is missing."""
    if reference_ms is None or ms is None or ms <= 0 or reference_ms <= 0:
        return None
    return reference_ms / ms


def gmac_per_s(gmacs: float | None, ms: float | None) -> float | None:
    """Achieved throughput GMAC/s = GMACs / (latency in s); None if either is missing."""
    if gmacs is None or ms is None or ms <= 0:
        return None
    return gmacs / (ms / 1000.0)


def fraction(value: float | None, limit: float | None) -> float | None:
    """value / limit (e.g. achieved / peak GMAC/s); None if either is missing."""
    if value is None or limit is None or limit <= 0:
        return None
    return value / limit


def delta(value: float | None, reference: float | None) -> float | None:
    """value − reference (e.g. int8 AUROC − fp32 AUROC); None if either is missing or nan."""
    if value is None or reference is None or math.isnan(value) or math.isnan(reference):
        return None
    return value - reference


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's ρ of two score lists (``edge.accuracy.spearman``) for a JSON row: None where it is undefined
    (a constant list, fewer than two pairs) or the lists differ in length."""
    if len(a) != len(b):
        return None
    return accuracy.defined(accuracy.spearman(a, b))
