"""Base of the remote sinks (webhook, MQTT, ...): every alarm goes through the durable outbox.

Flow: handle() enqueues → worker thread commits the alarm to the outbox (edge.sinks.outbox) →
sender thread delivers the outbox oldest first and deletes an alarm only once the receiver
confirmed it (``deliver()`` returned "ok").  A failed attempt is counted, logged with its real
reason and retried with exponential backoff (``backoff · 2^k``, capped at ``backoff_max``) forever;
a restart resumes from the outbox.  Delivery is **at least once**: an alarm whose confirmation is
lost (receiver too slow, connection cut after it got the message, crash before the delete) is sent
again with the same ``id`` — receivers deduplicate on ``id``.

Counters (``stats()``, /metrics, /status, the edge-run summary):
  queued     alarms this process committed to the outbox
  delivered  alarms the receiver confirmed (also ones queued by an earlier run); = "handled"
  failed     failed delivery attempts (the alarm stays queued) + permanent rejections + alarms
             discarded by the outbox bound; ``rejected`` / ``discarded`` count the last two
  backlog    alarms not yet delivered: in the memory queue + pending in the outbox
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, ClassVar

import numpy as np

from .base import Sink, event_payload, log
from .outbox import Outbox


class OutboxSink(Sink):
    """Subclasses implement ``deliver(alarm_id, data) -> ('ok' | 'retry' | 'reject', reason)``."""

    processed_counter = "queued"
    spool_option: ClassVar[str] = "spool_dir"      # the config option naming the outbox directory
    import_legacy_spool: ClassVar[bool] = False    # migrate the old one-file-per-alarm spool

    def __init__(self, spool_dir: str, *, spool_max: int = 10000, backoff: float = 1.0,
                 backoff_max: float = 300.0, **base: Any) -> None:
        super().__init__(**base)
        self._counts.update(queued=0, delivered=0, rejected=0)
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._outbox = Outbox(spool_dir, self.kind, spool_max, option=self.spool_option,
                              import_legacy_spool=self.import_legacy_spool)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._failures = 0  # consecutive failed attempts (0 = receiver reachable)
        self._last_reason = ""
        self._sender: threading.Thread | None = None

    # ---- for subclasses -------------------------------------------------------------------------------
    @property
    def target(self) -> str:
        """The receiver, for log lines (URL, host:port)."""
        return self.kind

    def payload(self, event: dict[str, Any]) -> dict[str, Any]:
        return event_payload(event)

    def deliver(self, alarm_id: str, data: bytes) -> tuple[str, str]:
        raise NotImplementedError

    def idle(self) -> None:
        """Nothing to send: wait for a new alarm (MQTT keeps its connection serviced meanwhile)."""
        self._wake.wait()

    def disconnect(self) -> None:
        """Release the connection (called on the sender thread when it stops)."""

    # ---- public -----------------------------------------------------------------------------------------
    @property
    def outbox_path(self) -> str:
        return str(self._outbox.path)

    @property
    def delivered(self) -> int:
        with self._counts_lock:
            return self._counts["delivered"]

    def pending(self) -> int:
        """Alarms in the outbox, not yet delivered."""
        return len(self._outbox)

    def start(self) -> OutboxSink:
        super().start()
        with self._start_lock:
            if self._sender is None and not self._closed:  # also delivers what an earlier run left queued
                self._sender = threading.Thread(target=self._send_loop, name=f"sink-{self.name}-sender",
                                                daemon=True)
                self._sender.start()
        return self

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["backlog"] += len(self._outbox)
        out["handled"] = out["delivered"]
        out["discarded"] = self._outbox.discarded
        return out

    # ---- worker thread: persist ---------------------------------------------------------------------------
    def process(self, event: dict[str, Any], frame_bgr: np.ndarray | None, overlay_bgr: np.ndarray | None) -> None:
        payload = self.payload(event)
        data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        for _ in range(self._outbox.put(str(payload["id"]), data)):
            self._count("failed")  # the bound discarded an older undelivered alarm: lost
        self._wake.set()

    # ---- sender thread: deliver ------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()  # before peek: a put after this point sets it again
                item = self._outbox.peek()
                if item is None:
                    self.idle()
                    continue
                seq, alarm, data = item
                try:
                    outcome, reason = self.deliver(alarm, data)
                except Exception as exc:  # a bug or an unexpected library error: retried like an outage
                    outcome, reason = "retry", f"{type(exc).__name__}: {exc}"
                    log.debug("sink %s: delivery error", self.name, exc_info=True)
                if outcome == "ok":
                    self._outbox.done(seq)
                    self._count("delivered")
                    if self._failures:
                        log.info("%s %s reachable again; %d alarm(s) left to deliver", self.kind, self.target,
                                 len(self._outbox))
                    self._failures = 0
                elif outcome == "reject":
                    self._outbox.reject(seq, reason)
                    self._count("failed")
                    self._count("rejected")
                    log.error("%s %s rejected alarm %s (%s); kept as 'rejected' in %s, not retried", self.kind,
                              self.target, alarm, reason, self._outbox.path)
                else:
                    self._outbox.failed_attempt(seq, reason)
                    self._count("failed")
                    self._failures += 1
                    self._last_reason = reason
                    delay = min(self._backoff * 2 ** min(self._failures - 1, 60), self._backoff_max)
                    self._warn("down", f"{self.kind} {self.target}: delivery failed ({reason}); "
                                       f"{len(self._outbox)} alarm(s) queued in {self._outbox.path}, "
                                       f"retrying with backoff up to {self._backoff_max:g} s")
                    self._stop.wait(delay)
        except Exception:
            log.exception("sink %s: sender stopped; undelivered alarms stay in %s", self.name, self._outbox.path)
        finally:
            try:
                self.disconnect()
            except Exception:
                log.debug("sink %s: disconnect failed", self.name, exc_info=True)
            finally:
                self._outbox.close()

    # ---- shutdown --------------------------------------------------------------------------------------------
    def _shutdown(self, timeout: float) -> None:
        """Give a reachable receiver the rest of `timeout` for the backlog; the rest stays in the outbox."""
        deadline = time.monotonic() + timeout
        if self._sender is None:
            self._outbox.close()
        else:
            while (len(self._outbox) and self._failures == 0 and self._sender.is_alive()
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            self._stop.set()
            self._wake.set()
            self._sender.join(max(0.0, deadline - time.monotonic()))
        pending = len(self._outbox)
        if pending:
            why = f" (last attempt: {self._last_reason})" if self._failures else ""
            log.warning("sink %s: %d alarm(s) still queued for %s in the outbox %s%s; they are delivered on the "
                        "next start", self.name, pending, self.target, self._outbox.path, why)
