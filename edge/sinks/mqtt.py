"""MQTT sink: publish event_payload() JSON per alarm (paho-mqtt >= 2, optional extra `dcam-edge[mqtt]`).

Durable like the webhook (edge.sinks.remote): every alarm is committed to the SQLite outbox in
``mqtt_spool_dir`` first and deleted only once the broker confirmed it — with QoS 1 its PUBACK
(QoS 2: PUBCOMP; QoS 0 has no confirmation: "delivered" then only means written to the socket).
A broker that is down, refuses the login or whose TLS certificate is not trusted leaves the alarm
queued: the attempt is counted as failed and logged with the real reason ("not authorized",
"certificate verify failed: ..."), then retried with backoff; a restart resumes from the outbox.
Delivery is at least once (a PUBACK lost with the connection means the alarm is published again,
same ``id``): subscribers deduplicate on ``id``.

The paho client is driven by the sender thread itself (``loop()``, no paho thread), and a fresh
client is made per connection, so nothing but the outbox holds undelivered alarms.
"""
from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from .base import log
from .config import SinkConfig, SinkConfigError, _where
from .remote import OutboxSink


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


def tls_context(ca_file: str | None = None, certfile: str | None = None,
                keyfile: str | None = None) -> ssl.SSLContext:
    """Client TLS context (hostname + chain verified); SinkConfigError naming the option of a bad file."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SinkConfigError(f"{_where('mqtt_ca_file')}: cannot load {ca_file} ({_reason(exc)})") from None
    if certfile is not None:
        try:
            ctx.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise SinkConfigError(f"{_where('mqtt_certfile')} / {_where('mqtt_keyfile')}: cannot load {certfile}"
                                  f"{' + ' + keyfile if keyfile else ''} ({_reason(exc)})") from None
    return ctx


def _reason(exc: BaseException) -> str:
    """A connection error as the operator needs to read it ("certificate verify failed: ...")."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


class MqttSink(OutboxSink):
    """Publishes alarms to one topic; `client_factory` makes the paho client (tests, custom settings)."""

    kind = "mqtt"
    spool_option = "mqtt_spool_dir"

    def __init__(self, host: str, spool_dir: str, *, port: int = 1883, topic: str = "dcam/alarm", qos: int = 1,
                 retain: bool = False, client_id: str = "", username: str | None = None,
                 password: str | None = None, tls: bool = False, ca_file: str | None = None,
                 certfile: str | None = None, keyfile: str | None = None, keepalive: int = 60,
                 timeout: float = 10.0, backoff: float = 1.0, backoff_max: float = 60.0, spool_max: int = 10000,
                 client_factory: Callable[[], Any] | None = None, **base: Any) -> None:
        # Everything that can fail on bad options runs before the outbox is opened (and locked).
        self._mqtt = _import_paho() if client_factory is None else None
        self._tls = tls_context(ca_file, certfile, keyfile) if (tls or ca_file or certfile) else None
        super().__init__(spool_dir, spool_max=spool_max, backoff=backoff, backoff_max=backoff_max, **base)
        self._host = host
        self._port = port
        self._topic = topic
        self._qos = qos
        self._retain = retain
        self._client_id = client_id or f"dcam-edge-{socket.gethostname()}-{os.getpid()}"
        self._username = username
        self._password = password
        self._keepalive = keepalive
        self._timeout = timeout
        self._client_factory = client_factory
        self._client: Any = None        # the connected client (CONNACK accepted), else None
        self._connack: Any = None       # reason code of the pending connection's CONNACK
        self._lost = ""                 # why the connection dropped (on_disconnect)
        self._idle_failures = 0
        self._next_connect = 0.0        # monotonic time of the next idle (re)connect attempt

    @classmethod
    def from_config(cls, cfg: SinkConfig, metrics: Any = None,
                    client_factory: Callable[[], Any] | None = None) -> MqttSink:
        spool_dir = cfg.mqtt_spool_dir_resolved()
        assert cfg.mqtt_host and spool_dir  # SinkConfig.validate() guarantees both
        return cls(cfg.mqtt_host, spool_dir, port=cfg.mqtt_port, topic=cfg.mqtt_topic, qos=cfg.mqtt_qos,
                   retain=cfg.mqtt_retain, client_id=cfg.mqtt_client_id, username=cfg.mqtt_username,
                   password=cfg.mqtt_password_resolved(), tls=cfg.mqtt_tls, ca_file=cfg.mqtt_ca_file,
                   certfile=cfg.mqtt_certfile, keyfile=cfg.mqtt_keyfile, keepalive=cfg.mqtt_keepalive,
                   timeout=cfg.mqtt.timeout, backoff=cfg.mqtt.backoff, backoff_max=cfg.mqtt.backoff_max,
                   spool_max=cfg.mqtt.spool_max, client_factory=client_factory, queue_size=cfg.sink_queue_size,
                   on_clear=cfg.on_clear, metrics=metrics)

    @property
    def target(self) -> str:
        return f"{self._host}:{self._port}"

    # ---- connection (sender thread only) -------------------------------------------------------------
    def _new_client(self) -> Any:
        if self._client_factory is not None:
            client = self._client_factory()
        else:
            mqtt = self._mqtt
            assert mqtt is not None  # imported whenever there is no client factory
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id,
                                 protocol=mqtt.MQTTv311)
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.connect_timeout = self._timeout
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        self._connack = reason_code

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        self._lost = str(reason_code)

    def _connect(self) -> str | None:
        """Open a fresh connection; None when the broker accepted it, else the reason it failed."""
        self._drop_client()
        client = self._new_client()
        self._connack, self._lost = None, ""
        try:
            client.connect(self._host, self._port, self._keepalive)
        except Exception as exc:  # refused, unreachable, DNS, TLS handshake (certificate verify failed), timeout
            _close_quietly(client)
            return _reason(exc)
        deadline = time.monotonic() + self._timeout
        while self._connack is None:
            rc = client.loop(0.05)
            if self._connack is not None:
                break
            if rc != 0 or time.monotonic() > deadline:
                _close_quietly(client)
                return (f"connection closed before CONNACK ({self._lost_reason(rc)})" if rc != 0
                        else f"no CONNACK within {self._timeout:g} s")
        if getattr(self._connack, "is_failure", False) or (isinstance(self._connack, int) and self._connack != 0):
            _close_quietly(client)
            return f"connection refused by the broker: {str(self._connack).lower()}"
        self._client = client
        log.info("mqtt connected to %s", self.target)
        return None

    def _drop_client(self) -> None:
        """Forget the connection (and whatever paho still held in memory: the outbox has it)."""
        client, self._client = self._client, None
        if client is not None:
            _close_quietly(client)

    def _error_string(self, rc: int) -> str:
        return self._mqtt.error_string(rc) if self._mqtt is not None else f"paho rc {rc}"

    def _lost_reason(self, rc: int) -> str:
        """Why loop() failed: paho's error text, plus the broker's DISCONNECT reason when it sent one."""
        reason = self._error_string(rc).rstrip(".")
        if self._lost and self._lost not in ("Unspecified error", "Success", "Normal disconnection"):
            reason += f"; {self._lost}"
        return reason

    # ---- OutboxSink hooks --------------------------------------------------------------------------------
    def deliver(self, alarm_id: str, data: bytes) -> tuple[str, str]:
        if self._client is None:
            reason = self._connect()
            if reason is not None:
                return "retry", reason
        client = self._client
        info = client.publish(self._topic, data, qos=self._qos, retain=self._retain)
        rc = int(getattr(info, "rc", 0))
        if rc == 9:  # MQTT_ERR_PAYLOAD_SIZE: never publishable
            return "reject", "payload too large for MQTT"
        if rc != 0:
            self._drop_client()
            return "retry", f"publish failed ({self._error_string(rc)})"
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                if info.is_published():  # QoS 1: PUBACK received (QoS 2: PUBCOMP)
                    return "ok", ""
            except (RuntimeError, ValueError) as exc:
                self._drop_client()
                return "retry", str(exc)
            if time.monotonic() > deadline:
                self._drop_client()  # a fresh connection next time; the outbox still holds the alarm
                return "retry", f"no PUBACK within {self._timeout:g} s"
            rc = client.loop(0.05)
            if rc != 0 and not info.is_published():
                lost = self._lost_reason(rc)
                self._drop_client()
                return "retry", f"connection lost before PUBACK ({lost})"

    def idle(self) -> None:
        client = self._client
        if client is not None:  # keep the connection alive (keepalive pings) and notice a broker going away
            rc = client.loop(0.1)
            if rc != 0 and not self._stop.is_set():
                lost = self._lost_reason(rc)
                self._drop_client()
                self._next_connect = time.monotonic() + self._backoff
                self._warn("disconnect", f"mqtt {self.target}: connection lost ({lost}); reconnecting "
                                         "(alarms are kept in the outbox meanwhile)")
            return
        now = time.monotonic()
        if now < self._next_connect:
            self._wake.wait(min(0.5, self._next_connect - now))
            return
        reason = self._connect()  # connect before the first alarm: a wrong password shows up at start
        if reason is None:
            self._idle_failures = 0
            return
        self._idle_failures += 1
        self._next_connect = now + min(self._backoff * 2 ** min(self._idle_failures - 1, 60), self._backoff_max)
        self._warn("connect", f"mqtt {self.target}: cannot connect ({reason}); retrying with backoff up to "
                              f"{self._backoff_max:g} s")

    def disconnect(self) -> None:
        client, self._client = self._client, None  # a clean exit: callbacks only record, nothing warns
        if client is None:
            return
        try:
            client.disconnect()
            client.loop(0.05)
        finally:
            _close_quietly(client)


def _close_quietly(client: Any) -> None:
    """Close a client's sockets (the connection and loop()'s wake-up pair) without callbacks or traffic."""
    client.on_disconnect = None
    client.on_connect = None
    reset = getattr(client, "_reset_sockets", None)  # what paho's Client.__del__ does; here deterministically
    if callable(reset):
        try:
            reset()
        except Exception:
            log.debug("mqtt: closing the client's sockets failed", exc_info=True)
