"""HTTP webhook sink: JSON POST per alarm, at least once via the durable outbox, never blocking the frame loop.

Flow (edge.sinks.remote): handle() enqueues → worker thread commits the alarm to the SQLite outbox
in ``webhook_spool_dir`` → sender thread POSTs queued alarms oldest first and deletes each only
after a 2xx.  Failures are retried with exponential backoff (webhook_backoff · 2^k, capped at
webhook_backoff_max) forever, so an alarm is only gone once delivered (or discarded by the outbox
bound).  A restart resumes from the outbox, in order.

Delivery is **at least once, not exactly once**: a receiver that got an alarm but whose answer was
lost or came after ``webhook_timeout`` gets it again.  Each payload carries an ``id`` (also sent
as the ``Idempotency-Key`` header), identical on every retry: receivers deduplicate on ``id``.
"""
from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from typing import Any

from .config import SinkConfig
from .remote import OutboxSink

# Answers that mean "this message will never be accepted" (retrying cannot help); everything else —
# network errors, 5xx, and config-level 401/403/404 that an operator can fix — is retried.
_PERMANENT_REJECTIONS = frozenset({400, 413, 415, 422})
_USER_AGENT = "dcam-edge-webhook/1"


class WebhookSink(OutboxSink):
    """POST event_payload() (+ "host") as JSON; undelivered alarms wait in the outbox."""

    kind = "webhook"
    spool_option = "webhook_spool_dir"
    import_legacy_spool = True  # <seq>.json files of the old file spool are moved into the outbox

    def __init__(self, url: str, spool_dir: str, *, timeout: float = 5.0, backoff: float = 1.0,
                 backoff_max: float = 300.0, spool_max: int = 10000, headers: tuple[str, ...] = (),
                 **base: Any) -> None:
        super().__init__(spool_dir, spool_max=spool_max, backoff=backoff, backoff_max=backoff_max, **base)
        self._url = url
        self._timeout = timeout
        self._headers = dict(_split_header(h) for h in headers)
        self._host = socket.gethostname()
        self._opener = urllib.request.build_opener()  # honours http(s)_proxy / no_proxy like curl

    @classmethod
    def from_config(cls, cfg: SinkConfig, metrics: Any = None) -> WebhookSink:
        delivery = cfg.webhook
        assert cfg.webhook_url and delivery.spool_dir  # SinkConfig.validate() guarantees both
        return cls(cfg.webhook_url, delivery.spool_dir, timeout=delivery.timeout, backoff=delivery.backoff,
                   backoff_max=delivery.backoff_max, spool_max=delivery.spool_max,
                   headers=cfg.webhook_headers, queue_size=cfg.sink_queue_size, on_clear=cfg.on_clear,
                   metrics=metrics)

    @property
    def target(self) -> str:
        return self._url

    def payload(self, event: dict[str, Any]) -> dict[str, Any]:
        payload = super().payload(event)
        payload["host"] = self._host
        return payload

    def deliver(self, alarm_id: str, data: bytes) -> tuple[str, str]:
        """('ok' | 'retry' | 'reject', reason) for one POST attempt."""
        headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT, "Idempotency-Key": alarm_id,
                   **self._headers}
        request = urllib.request.Request(self._url, data=data, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                response.read(65536)  # let keep-alive servers finish; the body is not used
            return "ok", ""
        except urllib.error.HTTPError as exc:
            exc.close()
            return ("reject" if exc.code in _PERMANENT_REJECTIONS else "retry"), f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            return "retry", f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def _split_header(header: str) -> tuple[str, str]:
    name, _, value = header.partition(":")
    return name.strip(), value.strip()
