"""How much of the machine other processes used while a measurement ran (Linux ``/proc/stat``).

On a shared machine a latency is only meaningful if the engine had the cores it asked for. Around each
timed block the worker reads the system-wide busy CPU time (user + nice + system + irq + softirq + steal,
all cores; steal = time the hypervisor gave to other VMs) and its own CPU time (all its threads); the
difference is CPU that *other* processes used meanwhile. Divided by the wall time it is the number of
cores they kept busy. A row is "contended" when those cores ate into the ones it needed:
other cores > (cores − threads) + ``TOLERANCE_CORES``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TOLERANCE_CORES = 0.25  # a quarter core of background activity (the bench's own parent, daemons) is noise
# /proc/stat and os.times() tick at 100 Hz: below half a second of timed work the estimate is mostly rounding.
MIN_WALL_S = 0.5


@dataclass(frozen=True)
class Snapshot:
    wall_s: float
    system_busy_s: float
    own_cpu_s: float


def snapshot() -> Snapshot | None:
    """Current wall clock, system-wide busy CPU seconds and this process's CPU seconds; None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    own = os.times()
    return Snapshot(time.perf_counter(), (user + nice + system + irq + softirq + steal) / hz, own.user + own.system)


def other_cpu_seconds(before: Snapshot | None, after: Snapshot | None) -> tuple[float, float] | None:
    """(CPU seconds used by other processes, wall seconds) between two snapshots; None if unavailable."""
    if before is None or after is None:
        return None
    others = (after.system_busy_s - before.system_busy_s) - (after.own_cpu_s - before.own_cpu_s)
    return max(0.0, others), after.wall_s - before.wall_s


def other_cores(other_cpu_s: float | None, wall_s: float | None) -> float | None:
    """Average number of cores other processes kept busy: CPU seconds / wall seconds (None under MIN_WALL_S)."""
    if other_cpu_s is None or wall_s is None or wall_s < MIN_WALL_S:
        return None
    return other_cpu_s / wall_s


def contended(others: float | None, threads: int, cores: int | None) -> bool | None:
    """Did other processes take cores this measurement needed? None when unknown."""
    if others is None or not cores:
        return None
    return others > max(0, cores - threads) + TOLERANCE_CORES
