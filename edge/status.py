"""Status endpoint of edge-run: live view, /healthz, /metrics (Prometheus text format), /latest.jpg, /status.

A stdlib ThreadingHTTPServer on its own daemon thread, bound to 127.0.0.1 by default (the box is
on a production network: expose it deliberately with --status-host 0.0.0.0).  It only reads
RuntimeCounters (thread-safe) and sink counters, so a slow client never slows the frame loop.

  /            live view: self-contained HTML page (edge.liveview) for the person at the line
  /live.json   what the page polls: the /status counters, health, score trace, last alarms
  /trace.json  score trace of the last minutes (bounded: one max-score point per time bucket)
  /alarms/N.jpg overlay snapshot of one of the last alarms (404 once it aged out)
  /healthz     200 + JSON while a frame was scored within `stall_s` seconds and the source is not
               stalled, else 503 + JSON
  /metrics     Prometheus text exposition format 0.0.4
  /latest.jpg  newest heatmap overlay JPEG, 404 until there is one
  /status      RuntimeCounters.snapshot() as JSON (incl. "device" and "engine_info": engine, device,
               providers, precision), plus "sinks": {name: per-sink counters}
Read-only (GET/HEAD only), no external assets; bound to 127.0.0.1 unless configured otherwise.
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from edge.cliconfig import option
from edge.jsonsafe import json_safe
from edge.liveview import PAGE, LiveView
from edge.redact import redact_credentials
from edge.sinks import sink_stats

log = logging.getLogger("edge.status")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))


class StatusError(ValueError):
    """Bad status endpoint option, or the address cannot be bound."""


@dataclass
class StatusConfig:
    """Status endpoint settings; flags --status-<field>, TOML section [status] with the field names."""

    config_error: ClassVar[type[ValueError]] = StatusError  # edge.cliconfig raises it for [status] keys

    port: int | None = option(None, "serve /healthz, /metrics, /latest.jpg on this TCP port (0 = any free port; "
                                    "default: off)")
    host: str = option("127.0.0.1", "address to bind (0.0.0.0 exposes it to the network)")
    stall_s: float = option(10.0, "/healthz returns 503 when no frame was scored for this many seconds")

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise StatusError(f"--status-port / [status] port: expected a port 0..65535, got {self.port!r}")
        if not self.stall_s > 0:
            raise StatusError(f"--status-stall-s / [status] stall_s: expected seconds > 0, got {self.stall_s!r}")
        if not self.host:
            raise StatusError("--status-host / [status] host: expected an address, got ''")


# ---- health and metrics (pure functions of a RuntimeCounters snapshot) ------------------------------

def health(snapshot: dict[str, Any], stall_s: float, now: float | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body): 200 'ok' if the last frame is at most `stall_s` old and the source is
    not stalled (snapshot "stalled": a read stall, until the next scored frame), else 503."""
    now = time.time() if now is None else now
    last = snapshot.get("last_frame_time")
    # A negative age is a wall-clock step backwards (NTP): treat the frame as fresh.
    age = None if last is None else max(0.0, now - last)
    if snapshot.get("stalled"):
        state = "stalled"
    elif age is None:
        state = "starting"
    elif age <= stall_s:
        state = "ok"
    else:
        state = "stalled"
    body = {"status": state, "last_frame_age_s": age, "stall_s": stall_s,
            **{k: snapshot.get(k) for k in ("frames", "fps", "alarm_active", "reconnects", "stalls", "uptime_s")}}
    return (200 if state == "ok" else 503), body


def _num(value: Any) -> str:
    """A Prometheus sample value (NaN for unknown)."""
    if value is None:
        return "NaN"
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Exposition:
    """Builds text format 0.0.4: one # HELP and # TYPE line per family, then its samples."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, Any], Any]]) -> None:
        full = self.prefix + name
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{full}{{{label_text}}} {_num(value)}" if labels else f"{full} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(snapshot: dict[str, Any], sink_stats: dict[str, dict[str, int]] | None = None,
                   now: float | None = None, prefix: str = "dcam_edge_") -> str:
    """Prometheus text for a RuntimeCounters.snapshot() (+ per-sink counters from Sink.stats())."""
    now = time.time() if now is None else now
    e = _Exposition(prefix)
    for name, key, help_text in (
            ("frames_total", "frames", "Frames scored since start."),
            ("dropped_frames_total", "dropped", "Frames skipped because the loop fell behind."),
            ("corrupt_frames_total", "corrupt", "Empty or undecodable frames from the source."),
            ("reconnects_total", "reconnects", "Source reconnects since start."),
            ("stalls_total", "stalls", "Reads that delivered no frame within the stall timeout."),
            ("alarms_total", "alarms", "Alarms raised since start."),
            ("sink_errors_total", "sink_errors", "Alarm events a sink dropped or failed to handle.")):
        e.family(name, "counter", help_text, [({}, snapshot.get(key, 0))])
    e.family("fps", "gauge", "Scored frames per second over the recent window.", [({}, snapshot.get("fps"))])
    lat = snapshot.get("latency_ms") or {}
    e.family("latency_seconds", "gauge", "Per-frame latency quantiles over the recent window, in seconds.",
             [({"quantile": q}, None if lat.get(key) is None else lat[key] / 1000.0)
              for q, key in LATENCY_QUANTILES])
    e.family("latency_max_seconds", "gauge", "Largest per-frame latency in the recent window, in seconds.",
             [({}, None if lat.get("max") is None else lat["max"] / 1000.0)])
    e.family("stalled", "gauge", "1 from a source stall until the next scored frame.",
             [({}, int(bool(snapshot.get("stalled"))))])
    e.family("alarm_active", "gauge", "1 while an alarm is raised.", [({}, int(bool(snapshot.get("alarm_active"))))])
    e.family("last_score", "gauge", "Anomaly score of the last frame.", [({}, snapshot.get("last_score"))])
    e.family("threshold", "gauge", "Alarm threshold in use.", [({}, snapshot.get("threshold"))])
    last = snapshot.get("last_frame_time")
    e.family("last_frame_age_seconds", "gauge", "Seconds since the last scored frame.",
             [({}, None if last is None else max(0.0, now - last))])
    e.family("uptime_seconds", "gauge", "Seconds since the runtime started.", [({}, snapshot.get("uptime_s"))])
    e.family("info", "gauge", "Source, model, engine and device of this runtime (value is always 1).",
             [({k: redact_credentials(str(snapshot.get(k) or "")) for k in ("source", "model", "engine", "device")},
               1)])
    if sink_stats:
        for name, key, kind, help_text in (
                ("sink_handled_total", "handled", "counter",
                 "Events a sink finished (remote sinks: delivered, i.e. confirmed by the receiver)."),
                ("sink_dropped_total", "dropped", "counter", "Events a sink dropped because its queue was full."),
                ("sink_failed_total", "failed", "counter",
                 "Events a sink failed to handle (remote sinks: failed delivery attempts, rejections, discards)."),
                ("sink_backlog", "backlog", "gauge",
                 "Events not yet done: queued in memory or, for remote sinks, waiting in the outbox.")):
            e.family(name, kind, help_text, [({"sink": s}, st.get(key, 0)) for s, st in sink_stats.items()])
        # Remote sinks (webhook, MQTT) only: alarms committed to the durable outbox / confirmed by the receiver.
        for name, key, help_text in (
                ("sink_queued_total", "queued", "Alarms a remote sink committed to its durable outbox."),
                ("sink_delivered_total", "delivered",
                 "Alarms the receiver confirmed (webhook 2xx, MQTT PUBACK) and that left the outbox.")):
            samples = [({"sink": s}, st[key]) for s, st in sink_stats.items() if key in st]
            if samples:
                e.family(name, "counter", help_text, samples)
    return e.text()


# ---- server ------------------------------------------------------------------------------------------

# Same-origin only: the page needs nothing beyond this endpoint.
_PAGE_CSP = ("default-src 'none'; img-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
             "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_ALARM_JPEG = re.compile(r"/alarms/(\d{1,12})\.jpg")


class _Handler(BaseHTTPRequestHandler):
    server_version = "dcam-edge-status"
    timeout = 10  # seconds a client may idle before its connection (and thread) is dropped

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        server = self.server
        assert isinstance(server, _StatusHTTPServer)  # the only server this handler is given to
        status = server.status
        path = self.path.split("?", 1)[0]
        try:
            self._respond(status, path)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away

    def _respond(self, status: StatusServer, path: str) -> None:
        endpoint = _ENDPOINTS.get(path)
        alarm = _ALARM_JPEG.fullmatch(path)
        if endpoint is not None:
            endpoint(self, status)
        elif alarm is not None:
            self._alarm_jpeg(status, int(alarm.group(1)))
        else:
            self._send(404, "text/plain", b"not found\n")

    def _healthz(self, status: StatusServer) -> None:
        code, body = health(status.metrics.snapshot(), status.stall_s)
        self._send(code, "application/json", json.dumps(body).encode())

    def _metrics(self, status: StatusServer) -> None:
        self._send(200, PROMETHEUS_CONTENT_TYPE, status.metrics_text().encode())

    def _latest_jpeg(self, status: StatusServer) -> None:
        data = status.metrics.latest_jpeg()
        if data is None:
            self._send(404, "text/plain", b"no overlay yet\n")
        else:
            self._send(200, "image/jpeg", data, extra={"Cache-Control": "no-store"})

    def _status(self, status: StatusServer) -> None:
        snap = status.metrics.snapshot()
        if isinstance(snap.get("source"), str):
            snap["source"] = redact_credentials(snap["source"])
        snap["sinks"] = status.sink_stats()
        self._send(200, "application/json", json.dumps(snap, default=str).encode())

    def _page(self, status: StatusServer) -> None:
        self._send(200, "text/html; charset=utf-8", PAGE.encode(),
                   extra={"Cache-Control": "no-store", "Content-Security-Policy": _PAGE_CSP,
                          "X-Content-Type-Options": "nosniff"})

    def _live_json(self, status: StatusServer) -> None:
        live = json.dumps(json_safe(status.live_state()), default=str, allow_nan=False).encode()
        self._send(200, "application/json", live, extra={"Cache-Control": "no-store"})

    def _trace_json(self, status: StatusServer) -> None:
        self._send(200, "application/json", json.dumps(status.live.trace()).encode(),
                   extra={"Cache-Control": "no-store"})

    def _alarm_jpeg(self, status: StatusServer, alarm_id: int) -> None:
        data = status.live.alarm_jpeg(alarm_id)
        if data is None:
            self._send(404, "text/plain", b"no such alarm snapshot (only the last few are kept)\n")
        else:
            self._send(200, "image/jpeg", data, extra={"Cache-Control": "max-age=3600"})

    def _send(self, code: int, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(code, HTTPStatus(code).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # scrapes every 15 s must not fill the journal
        log.debug("%s " + format, self.address_string(), *args)


class _StatusHTTPServer(ThreadingHTTPServer):
    status: StatusServer  # what the handlers serve


# The fixed endpoints (an alarm's snapshot, /alarms/<n>.jpg, is matched by _ALARM_JPEG).
_ENDPOINTS: dict[str, Callable[[_Handler, StatusServer], None]] = {
    "/healthz": _Handler._healthz, "/metrics": _Handler._metrics, "/latest.jpg": _Handler._latest_jpeg,
    "/status": _Handler._status, "/": _Handler._page, "/index.html": _Handler._page,
    "/live.json": _Handler._live_json, "/trace.json": _Handler._trace_json,
}


class StatusServer:
    """Serve the endpoints for `metrics` (RuntimeCounters) and optional `sinks` on a daemon thread."""

    def __init__(self, metrics: Any, host: str = "127.0.0.1", port: int = 0, stall_s: float = 10.0,
                 sinks: Iterable[Any] = ()) -> None:
        self.metrics = metrics
        self.stall_s = stall_s
        self.sinks = list(sinks)
        self.live = LiveView()  # fed by the runner: score trace + last alarms for the live page
        try:
            self._httpd = _StatusHTTPServer((host, port), _Handler)
        except OSError as exc:
            raise StatusError(f"--status-host/--status-port {host}:{port}: cannot listen ({exc.strerror or exc})") \
                from None
        self._httpd.daemon_threads = True
        self._httpd.status = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="status-http", daemon=True)

    @classmethod
    def from_config(cls, config: StatusConfig, metrics: Any, sinks: Iterable[Any] = ()) -> StatusServer | None:
        """A started server, or None when config.port is None (endpoint disabled)."""
        if config.port is None:
            return None
        return cls(metrics, config.host, config.port, config.stall_s, sinks).start()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        assert isinstance(host, str)  # an IP socket's address (bytes only for AF_UNIX)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def sink_stats(self) -> dict[str, dict[str, int]]:
        """{sink name: Sink.stats()} (queued / delivered / failed / backlog ... per sink)."""
        return sink_stats(self.sinks)

    def metrics_text(self) -> str:
        return render_metrics(self.metrics.snapshot(), self.sink_stats())

    def live_state(self) -> dict[str, Any]:
        """What the live page shows (bounded: counters, health, minutes of trace, a few alarms)."""
        snap: dict[str, Any] = self.metrics.snapshot()
        if isinstance(snap.get("source"), str):
            snap["source"] = redact_credentials(snap["source"])
        snap["health"] = health(snap, self.stall_s)[1]
        snap["sinks"] = self.sink_stats()
        snap.update(trace=self.live.trace(), recent_alarms=self.live.alarms())
        return snap

    def start(self) -> StatusServer:
        self._thread.start()
        log.info("status endpoint on %s (live view at /; /healthz /metrics /latest.jpg /status)", self.url)
        return self

    def close(self, timeout: float = 2.0) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout)
        self._httpd.server_close()

    def __enter__(self) -> StatusServer:
        return self if self._thread.is_alive() else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
