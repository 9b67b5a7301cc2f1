"""MQTT sink: publish event_payload() JSON per alarm (paho-mqtt >= 2, optional extra `dcam-edge[mqtt]`).

paho's network loop runs in its own thread and reconnects by itself; QoS 1/2 messages published
while the broker is away are queued in memory (bounded) and sent after the reconnect.  Unlike the
webhook spool this queue does not survive a restart.
"""
from __future__ import annotations

import json
import os
import socket
from typing import Any, Callable

import numpy as np

from .base import Sink, event_payload, log
from .config import SinkConfig, SinkConfigError

_MAX_QUEUED = 1000  # messages paho keeps while disconnected (memory bound for long outages)


def _import_paho() -> Any:
    """paho.mqtt.client, or SinkConfigError saying how to install it."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise SinkConfigError("--mqtt-host / [sinks] mqtt_host: the MQTT sink needs paho-mqtt >= 2; "
                              "install it with: pip install 'dcam-edge[mqtt]'") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise SinkConfigError("--mqtt-host / [sinks] mqtt_host: paho-mqtt >= 2 is required (found an older "
                              "version); upgrade with: pip install -U 'paho-mqtt>=2'")
    return mqtt


class MqttSink(Sink):
    """Publishes alarms to one topic; `client_factory` injects a client (tests, custom TLS)."""

    kind = "mqtt"

    def __init__(self, host: str, *, port: int = 1883, topic: str = "dcam/alarm", qos: int = 1,
                 retain: bool = False, client_id: str = "", username: str | None = None,
                 password: str | None = None, tls: bool = False, keepalive: int = 60,
                 client_factory: Callable[[], Any] | None = None, **base: Any) -> None:
        super().__init__(**base)
        self._topic = topic
        self._qos = qos
        self._retain = retain
        self._host = host
        self._port = port
        if client_factory is None:
            mqtt = _import_paho()
            client_id = client_id or f"dcam-edge-{socket.gethostname()}-{os.getpid()}"
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        else:
            client = client_factory()
        if username is not None:
            client.username_pw_set(username, password)
        if tls:
            client.tls_set()
        client.max_queued_messages_set(_MAX_QUEUED)
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        # connect_async + loop_start: no network I/O here, a missing broker does not stop start-up.
        client.connect_async(host, port, keepalive)
        client.loop_start()
        self._client = client

    @classmethod
    def from_config(cls, cfg: SinkConfig, metrics: Any = None,
                    client_factory: Callable[[], Any] | None = None) -> "MqttSink":
        assert cfg.mqtt_host
        return cls(cfg.mqtt_host, port=cfg.mqtt_port, topic=cfg.mqtt_topic, qos=cfg.mqtt_qos, retain=cfg.mqtt_retain,
                   client_id=cfg.mqtt_client_id, username=cfg.mqtt_username, password=cfg.mqtt_password_resolved(),
                   tls=cfg.mqtt_tls, keepalive=cfg.mqtt_keepalive, client_factory=client_factory,
                   queue_size=cfg.sink_queue_size, on_clear=cfg.on_clear, metrics=metrics)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        if getattr(reason_code, "is_failure", False):
            self._warn("connect", f"mqtt {self._host}:{self._port}: connection refused ({reason_code})")
        else:
            log.info("mqtt connected to %s:%d", self._host, self._port)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._warn("connect", f"mqtt {self._host}:{self._port}: cannot connect; retrying (messages are queued)")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        self._warn("disconnect", f"mqtt {self._host}:{self._port}: disconnected ({reason_code}); reconnecting")

    def process(self, event: dict, frame_bgr: np.ndarray | None, overlay_bgr: np.ndarray | None) -> None:
        payload = json.dumps(event_payload(event), separators=(",", ":"))
        info = self._client.publish(self._topic, payload, qos=self._qos, retain=self._retain)
        rc = int(getattr(info, "rc", 0))
        # rc 4 (NO_CONN) with QoS > 0: paho keeps the message and sends it after reconnecting.
        if rc != 0 and not (rc == 4 and self._qos > 0):
            raise RuntimeError(f"mqtt publish to {self._topic} failed (paho rc {rc})")

    def _shutdown(self, timeout: float) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
