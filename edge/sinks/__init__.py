"""Alarm sinks of the edge runtime: log/JSONL, snapshots, HTTP webhook, MQTT, GPIO, command.

The remote sinks (webhook, MQTT) share one durable outbox (SQLite, edge.sinks.outbox): an alarm is
removed from it only once the receiver confirmed it; delivery is at least once (dedupe on ``id``).

The frame loop calls ``sink.handle(event, frame_bgr, overlay_bgr)`` for every frame; each sink
filters the events it acts on and does its work on its own thread, so ``handle()`` returns at
once.  Optional dependencies (paho-mqtt, gpiozero) are imported only when their sink is enabled.

    sinks = build_sinks(run_config.sinks, metrics)   # SinkConfig: a group of edge.config.RunConfig
    ...
    for s in sinks: s.handle(event, frame, overlay)
    ...
    close_sinks(sinks, timeout=5.0)
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from .base import Sink, alarm_id, event_json, event_payload
from .config import COMMAND_PLACEHOLDERS, DeliveryOptions, SinkConfig, SinkConfigError

__all__ = ["Sink", "SinkConfig", "DeliveryOptions", "SinkConfigError", "COMMAND_PLACEHOLDERS", "build_sinks",
           "close_sinks", "sink_stats", "alarm_id", "event_json", "event_payload"]


def build_sinks(config: SinkConfig, metrics: Any = None) -> list[Sink]:
    """Create and start every sink the config enables (in the order log, snapshot, webhook, mqtt, gpio, command).

    `metrics` (edge.counters.RuntimeCounters) gets ``record_sink_error()`` for dropped/failed events.
    Raises SinkConfigError (naming the option) when a sink cannot be set up — e.g. an unwritable
    directory, a missing optional dependency, no GPIO hardware; sinks already started are closed first.
    """
    sinks: list[Sink] = []
    try:
        for name in config.enabled():
            sinks.append(_sink_class(name).from_config(config, metrics))
        for sink in sinks:
            sink.start()
    except BaseException:
        close_sinks(sinks, timeout=1.0)
        raise
    return sinks


def close_sinks(sinks: list[Sink], timeout: float = 5.0) -> None:
    """Close all sinks in parallel within `timeout` seconds (queued alarms are finished or kept in the outbox)."""
    deadline = time.monotonic() + timeout
    # In parallel: a webhook delivering its backlog must not eat the time the snapshot sink needs.
    closers = [threading.Thread(target=sink.close, args=(timeout,), name=f"close-{sink.name}", daemon=True)
               for sink in sinks]
    for t in closers:
        t.start()
    for t in closers:
        t.join(max(0.0, deadline - time.monotonic()))


def sink_stats(sinks: Iterable[Any]) -> dict[str, dict[str, int]]:
    """{sink name: its stats()} (remote sinks: queued / delivered / failed / backlog ...).

    Sinks without counters (test doubles) or whose stats() fails are left out: a broken sink must not
    break the summary or the status endpoint.
    """
    out = {}
    for sink in sinks:
        try:
            out[str(getattr(sink, "name", type(sink).__name__))] = dict(sink.stats())
        except Exception:
            continue
    return out


def _sink_class(name: str) -> Any:
    # Imported here so an unused sink's module (and its optional dependency) is never loaded.
    if name == "log":
        from .jsonl import JsonlSink
        return JsonlSink
    if name == "snapshot":
        from .snapshot import SnapshotSink
        return SnapshotSink
    if name == "webhook":
        from .webhook import WebhookSink
        return WebhookSink
    if name == "mqtt":
        from .mqtt import MqttSink
        return MqttSink
    if name == "gpio":
        from .gpio import GpioSink
        return GpioSink
    if name == "command":
        from .command import CommandSink
        return CommandSink
    raise KeyError(name)
