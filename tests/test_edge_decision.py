"""edge.decision: k-of-n raise / m-clean clear debouncing on hand-made score sequences."""
from __future__ import annotations

import math

import pytest

from edge.decision import Debouncer, Decider, DecisionError


def _run(scores: list[float], thr: float = 1.0, k: int = 2, n: int = 3, m: int = 5):
    d = Decider(thr, k, n, m)
    out = [d.update(s) for s in scores]
    return [o.alarm for o in out], [o.event for o in out]


def test_alarms_cover_defect_segments_with_one_raise_each() -> None:
    clean, bad = 0.2, 3.0
    # Two defect segments (frames 10-19 and 40-44) with an isolated spike at 30 that must not alarm.
    scores = [clean] * 10 + [bad] * 10 + [clean] * 10 + [bad] + [clean] * 9 + [bad] * 5 + [clean] * 15
    alarm, events = _run(scores)
    raises = [i for i, e in enumerate(events) if e == "raise"]
    clears = [i for i, e in enumerate(events) if e == "clear"]
    # k=2: the raise comes on the 2nd defective frame; m=5: the clear on the 5th clean frame after.
    assert raises == [11, 41]
    assert clears == [24, 49]
    expected = [11 <= i < 24 or 41 <= i < 49 for i in range(len(scores))]
    assert alarm == expected
    assert not any(alarm[25:41])  # the single spike at 30 stayed below k-of-n


def test_k_of_n_with_gaps_and_flicker_during_alarm() -> None:
    # Exceedances at 0 and 2 are 2 of the last 3 frames → raise at 2 despite the gap.
    alarm, events = _run([2, 0, 2, 0, 2, 0, 0, 0, 0, 0, 0])
    assert events.index("raise") == 2
    # During the alarm a single exceedance (frame 4) restarts the clean count: clear at 4 + 5 = 9.
    assert events.index("clear") == 9 and events.count("raise") == 1
    assert alarm == [False, False, True, True, True, True, True, True, True, False, False]


def test_threshold_is_strict_and_nan_fails_safe() -> None:
    _, events = _run([1.0, 1.0, 1.0], thr=1.0)  # equal to the threshold is not an exceedance
    assert events == [None, None, None]
    d = Decider(1.0, 1, 1, 1)
    assert d.update(math.nan).event == "raise"


def test_k1_n1_m1_is_plain_thresholding() -> None:
    scores = [0, 2, 2, 0, 2, 0]
    alarm, events = _run(scores, k=1, n=1, m=1)
    assert alarm == [s > 1 for s in scores]
    assert events == [None, "raise", None, "clear", "raise", "clear"]


def test_no_reraise_from_stale_history_after_clear() -> None:
    # m < n: after the clear, exceedances older than the clear must not count towards a new raise.
    d = Debouncer(raise_k=2, raise_n=5, clear_m=1)
    seq = [True, True, False, True]
    events = [d.update(x) for x in seq]
    assert events == [None, "raise", "clear", None]


@pytest.mark.parametrize("k,n,m", [(0, 3, 5), (4, 3, 5), (2, 3, 0)])
def test_invalid_parameters(k: int, n: int, m: int) -> None:
    with pytest.raises(DecisionError, match="--raise-k|--clear-m"):
        Debouncer(k, n, m)
