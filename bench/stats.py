"""Latency statistics of a benchmark: percentiles, frames per second, throughput and ratios.

Percentiles use linear interpolation between order statistics (Hyndman & Fan 1996, definition 7 —
numpy's and Excel's default): for sorted x_0..x_{n−1}, P(q) = x_⌊h⌋ + (h − ⌊h⌋)(x_⌊h⌋+1 − x_⌊h⌋)
with h = (n − 1)·q/100.  FPS is 1000 / median latency (one frame in flight, as the edge runner
processes frames), not runs / total time, so one slow outlier does not move it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


class StatsError(ValueError):
    """Statistics asked of an empty sample or with an impossible parameter."""


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


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span (as Spearman's ρ requires)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return out


def pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson's r; None for fewer than two pairs, unequal lengths or a constant input."""
    n = len(a)
    if n != len(b) or n < 2:
        return None
    ma, mb = sum(a) / n, sum(b) / n
    da, db = [x - ma for x in a], [y - mb for y in b]
    sa, sb = sum(x * x for x in da), sum(y * y for y in db)
    if sa == 0 or sb == 0:
        return None
    return sum(x * y for x, y in zip(da, db)) / math.sqrt(sa * sb)


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's ρ: Pearson's r of the tie-averaged ranks (the export guard's score-agreement statistic)."""
    if len(a) != len(b):
        return None
    return pearson(ranks([float(x) for x in a]), ranks([float(y) for y in b]))
