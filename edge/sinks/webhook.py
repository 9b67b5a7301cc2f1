"""HTTP webhook sink: JSON POST per alarm, at-least-once via a disk spool, never blocking the frame loop.

Flow: handle() enqueues → worker thread writes the alarm to the spool (fsync'd) → sender thread
POSTs spooled alarms oldest first and deletes each after a 2xx.  Failures are retried with
exponential backoff (webhook_backoff · 2^k, capped at webhook_backoff_max) forever, so an alarm
is only gone once delivered (or discarded by the spool bound).  A restart re-sends the spool in
order.  Each payload carries an ``id`` (also sent as the ``Idempotency-Key`` header): a receiver
that got an alarm but whose answer was lost sees it again with the same id and can drop it.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from .base import Sink, event_payload, log
from .config import SinkConfig
from .spool import Spool

# Answers that mean "this message will never be accepted" (retrying cannot help); everything else —
# network errors, 5xx, and config-level 401/403/404 that an operator can fix — is retried.
_PERMANENT_REJECTIONS = frozenset({400, 413, 415, 422})
_USER_AGENT = "dcam-edge-webhook/1"


class WebhookSink(Sink):
    """POST event_payload() (+ "host") as JSON; undelivered alarms wait in the spool directory."""

    kind = "webhook"

    def __init__(self, url: str, spool_dir: str, *, timeout: float = 5.0, backoff: float = 1.0,
                 backoff_max: float = 300.0, spool_max: int = 10000, headers: tuple[str, ...] = (),
                 **base: Any) -> None:
        super().__init__(**base)
        self._url = url
        self._timeout = timeout
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._headers = dict(_split_header(h) for h in headers)
        self._host = socket.gethostname()
        self._spool = Spool(spool_dir, spool_max)
        self._opener = urllib.request.build_opener()  # honours http(s)_proxy / no_proxy like curl
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._failures = 0  # consecutive failed attempts (0 = endpoint reachable)
        self.delivered = 0
        self.rejected = 0
        self._sender: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg: SinkConfig, metrics: Any = None) -> "WebhookSink":
        assert cfg.webhook_url and cfg.webhook_spool_dir  # SinkConfig.validate() guarantees both
        return cls(cfg.webhook_url, cfg.webhook_spool_dir, timeout=cfg.webhook_timeout, backoff=cfg.webhook_backoff,
                   backoff_max=cfg.webhook_backoff_max, spool_max=cfg.webhook_spool_max,
                   headers=cfg.webhook_headers, queue_size=cfg.sink_queue_size, on_clear=cfg.on_clear,
                   metrics=metrics)

    def start(self) -> "WebhookSink":
        super().start()
        with self._start_lock:
            if self._sender is None:  # also re-sends what a previous run left in the spool
                self._sender = threading.Thread(target=self._send_loop, name="sink-webhook-sender", daemon=True)
                self._sender.start()
        return self

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["backlog"] += len(self._spool)
        out.update(delivered=self.delivered, rejected=self.rejected, discarded=self._spool.discarded)
        return out

    def pending(self) -> int:
        """Alarms spooled but not yet delivered."""
        return len(self._spool)

    # ---- worker thread: persist ------------------------------------------------------------------
    def process(self, event: dict, frame_bgr: np.ndarray | None, overlay_bgr: np.ndarray | None) -> None:
        payload = event_payload(event)
        payload["host"] = self._host
        self._spool.append(json.dumps(payload, separators=(",", ":")).encode())
        self._wake.set()

    # ---- sender thread: deliver ------------------------------------------------------------------
    def _send_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()  # before peek: an append after this point sets it again
                item = self._spool.peek()
                if item is None:
                    self._wake.wait()
                    continue
                name, data = item
                outcome, detail = self._post(data)
                if outcome == "ok":
                    self._spool.remove(name)
                    self.delivered += 1
                    if self._failures:
                        log.info("webhook %s reachable again; %d alarm(s) left to re-send", self._url,
                                 len(self._spool))
                    self._failures = 0
                elif outcome == "reject":
                    target = self._spool.quarantine(name)
                    self.rejected += 1
                    self._count("failed")
                    log.error("webhook %s rejected alarm (%s); kept in %s, not retried", self._url, detail, target)
                else:
                    self._failures += 1
                    delay = min(self._backoff * 2 ** (self._failures - 1), self._backoff_max)
                    self._warn("down", f"webhook {self._url} unreachable ({detail}); {len(self._spool)} alarm(s) "
                                       f"spooled in {self._spool.dir}, retrying with backoff up to "
                                       f"{self._backoff_max:g} s")
                    self._stop.wait(delay)
        finally:
            self._spool.close()

    def _post(self, data: bytes) -> tuple[str, str]:
        """('ok' | 'retry' | 'reject', detail) for one POST attempt."""
        headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT,
                   "Idempotency-Key": json.loads(data).get("id", ""), **self._headers}
        request = urllib.request.Request(self._url, data=data, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                response.read(65536)  # let keep-alive servers finish; the body is not used
            return "ok", ""
        except urllib.error.HTTPError as exc:
            exc.close()
            return ("reject" if exc.code in _PERMANENT_REJECTIONS else "retry"), f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            return "retry", f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"

    # ---- shutdown ----------------------------------------------------------------------------------
    def _shutdown(self, timeout: float) -> None:
        """Give a reachable endpoint the rest of `timeout` to take the backlog; the rest stays spooled."""
        deadline = time.monotonic() + timeout
        if self._sender is None:
            self._spool.close()
            return
        while len(self._spool) and self._failures == 0 and self._sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        self._sender.join(max(0.0, deadline - time.monotonic()))
        if self._sender.is_alive():
            log.warning("webhook sender still waiting for %s after close; %d alarm(s) stay spooled for the next start",
                        self._url, len(self._spool))


def _split_header(header: str) -> tuple[str, str]:
    name, _, value = header.partition(":")
    return name.strip(), value.strip()
