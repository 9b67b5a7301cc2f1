"""What ``edge-run`` tells systemd while it runs: STATUS= lines, READY=1, WATCHDOG=1 and STOPPING=1.

``STATUS=`` follows the source (opening → waiting for frames → scoring / stalled), ``READY=1`` is sent
once the first frame is scored (not when the camera opens), ``WATCHDOG=1`` only while the source's
reading loop makes progress (``ResilientSource.loop_alive``: not hung in a driver call), so systemd
restarts a process whose camera driver wedged.
"""
from __future__ import annotations

import logging

from edge.counters import RuntimeCounters
from edge.sdnotify import SystemdNotifier
from edge.sources import ResilientSource

log = logging.getLogger("edge.runner.heartbeat")  # under edge.runner: one logger level covers the whole frame loop


class Heartbeat:
    """systemd notifications of one frame loop over ``source``."""

    def __init__(self, notifier: SystemdNotifier, source: ResilientSource, metrics: RuntimeCounters,
                 stall_timeout: float) -> None:
        self.notifier, self.source, self.metrics = notifier, source, metrics
        self.stall_timeout = stall_timeout
        self.description = source.raw.description
        self.ready = False
        self._status = ""
        self._hung = False
        self._stopping = False

    def _set_status(self, text: str) -> None:
        if text != self._status:  # STATUS= on changes only
            self._status = text
            self.notifier.status(text)

    def tick(self) -> None:
        """STATUS= on state changes; WATCHDOG=1 unless the source's reading loop hangs."""
        if not self.source.opened_once:
            self._set_status(f"opening {self.description}")
        elif not self.ready:
            self._set_status(f"waiting for frames from {self.description}")
        elif self.metrics.stalled:
            self._set_status(f"stalled: no frame from {self.description} for {self.stall_timeout:g} s; reconnecting")
        else:
            self._set_status(f"scoring {self.description}")
        if self.source.loop_alive():
            self._hung = False
            self.notifier.watchdog()
        elif not self._hung:
            self._hung = True
            log.error("%s: the frame source is hung in a driver call; no longer feeding the systemd watchdog",
                      self.description)

    def frame_scored(self) -> None:
        """READY=1 (with its STATUS=) after the first scored frame."""
        if not self.ready:
            self.ready = True
            self._status = f"scoring {self.description}"
            self.notifier.ready(self._status)

    def stopping(self) -> None:
        """STOPPING=1, once (the runner calls it first thing in teardown and again as a fallback)."""
        if not self._stopping:
            self._stopping = True
            self.notifier.stopping()

    def close(self) -> None:
        self.notifier.close()
