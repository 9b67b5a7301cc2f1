"""SinkConfig: every alarm sink's settings, settable from CLI flags or the `[sinks]` TOML section.

A group of edge-run's RunConfig (edge.cliconfig): one field ↔ one flag (``--`` + field name with
dashes) ↔ one ``[sinks]`` key (the field name).  The two remote sinks share one DeliveryOptions
class (durable outbox + retry policy), used twice with the prefixes ``webhook`` and ``mqtt``:
``--webhook-backoff`` ↔ ``[sinks] webhook_backoff``.  A sink is enabled by setting its "switch"
field (``log_path``, ``snapshot_dir``, ``webhook_url``, ``mqtt_host``, ``gpio_pin``, ``command``);
the others tune it.
"""
from __future__ import annotations

import os
import re
import shlex
import string
from dataclasses import dataclass, fields
from typing import Any, ClassVar
from urllib.parse import urlsplit

from edge.cliconfig import group, option


class SinkConfigError(ValueError):
    """A sink option has a bad value, or a sink cannot be set up (message names the option)."""


# Placeholders an external command's arguments may contain ({score:.3f} format specs allowed).
COMMAND_PLACEHOLDERS = ("id", "event", "score", "threshold", "alarm", "frame", "time", "latency_ms",
                        "path", "category", "model")

# Environment variable read when mqtt_password is unset (keeps secrets out of argv and the TOML file).
MQTT_PASSWORD_ENV = "DCAM_MQTT_PASSWORD"


def split_command(text: str) -> list[str]:
    """A command given as one string, split like a shell would (it is never run by one)."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise SinkConfigError(f"--command / [sinks] command: cannot split {text!r} into arguments ({exc})") from None


@dataclass
class DeliveryOptions:
    """A remote sink's durable outbox and retry policy (SinkConfig.webhook, SinkConfig.mqtt)."""

    spool_dir: str | None = option(None, "directory of the durable outbox (outbox.sqlite3; one directory can serve "
                                         "webhook and MQTT): every alarm is committed there and removed only once "
                                         "the receiver confirmed it (a 2xx, the broker's PUBACK), re-sent in order, "
                                         "also after a restart; required with --webhook-url / --mqtt-host (MQTT's "
                                         "default: --webhook-spool-dir)", metavar="DIR")
    spool_max: int = option(10000, "most undelivered alarms kept in the outbox; beyond it the oldest are discarded")
    timeout: float = option(5.0, "seconds per attempt (webhook: the HTTP request; MQTT: TCP/TLS connect, CONNACK, "
                                 "PUBACK)")
    backoff: float = option(1.0, "seconds before the first retry; doubles per failed attempt")
    backoff_max: float = option(300.0, "cap of the retry delay in seconds (retries never stop)")

    def validate(self, sink: str) -> None:
        """SinkConfigError naming ``<sink>_<option>`` for the first bad value."""
        _check(f"{sink}_timeout", self.timeout, self.timeout > 0, "seconds > 0")
        _check(f"{sink}_backoff", self.backoff, self.backoff > 0, "seconds > 0")
        _check(f"{sink}_backoff_max", self.backoff_max, self.backoff_max >= self.backoff,
               f"seconds >= {sink}_backoff ({self.backoff})")
        _check(f"{sink}_spool_max", self.spool_max, self.spool_max >= 1, "an integer >= 1")


@dataclass
class SinkConfig:
    """Settings of all alarm sinks (several may be enabled at once)."""

    config_error: ClassVar[type[ValueError]] = SinkConfigError  # edge.cliconfig raises it for [sinks] keys

    # --- common -------------------------------------------------------------------------------
    on_clear: bool = option(False, "also send 'clear' events (alarm ended) to the sinks, not only 'raise'")
    sink_queue_size: int = option(256, "events buffered per sink (snapshot sink: at most 8) before new ones are "
                                      "dropped and counted (handle() never blocks the frame loop)")
    # --- log / JSONL ----------------------------------------------------------------------------
    log_path: str | None = option(None, "append alarms as JSON lines to this file ('-' = stdout / journald)",
                                metavar="FILE")
    log_all_frames: bool = option(False, "log every scored frame, not only alarm events")
    log_max_mb: float = option(50.0, "rotate the log file to FILE.1 when it exceeds this size (0 = never)")
    # --- snapshots ------------------------------------------------------------------------------
    snapshot_dir: str | None = option(None, "write original frame + heatmap overlay + event JSON per alarm here",
                                    metavar="DIR")
    snapshot_max_count: int = option(500, "keep at most this many alarm snapshots (oldest deleted first)")
    snapshot_max_mb: float = option(200.0, "keep snapshots below this total size in MB (oldest deleted first)")
    snapshot_format: str = option("jpg", "image format of snapshots", choices=("jpg", "png"))
    # --- HTTP webhook ---------------------------------------------------------------------------
    webhook_url: str | None = option(None, "POST each alarm as JSON to this http(s) URL", metavar="URL")
    webhook_headers: tuple[str, ...] = option((), "extra HTTP header 'Name: value' (repeatable)",
                                              flag="--webhook-header", metavar="'NAME: VALUE'", repeat=True)
    webhook: DeliveryOptions = group(DeliveryOptions, prefix="webhook", title="webhook delivery")
    # --- MQTT -----------------------------------------------------------------------------------
    mqtt_host: str | None = option(None, "publish alarms to this MQTT broker (needs dcam-edge[mqtt])", metavar="HOST")
    mqtt_port: int = option(1883, "MQTT broker port")
    mqtt_topic: str = option("dcam/alarm", "MQTT topic of alarm messages")
    mqtt_qos: int = option(1, "MQTT QoS of alarm messages", choices=(0, 1, 2))
    mqtt_retain: bool = option(False, "publish alarm messages with the retain flag")
    mqtt_client_id: str = option("", "MQTT client id (default: dcam-edge-<hostname>)")
    mqtt_username: str | None = option(None, "MQTT user name")
    mqtt_password: str | None = option(None, f"MQTT password (TOML or ${MQTT_PASSWORD_ENV} only: not a flag, "
                                           "argv is world-readable)", cli=False)
    mqtt_tls: bool = option(False, "connect to the broker with TLS (system CA certificates unless --mqtt-ca-file)")
    mqtt_ca_file: str | None = option(None, "PEM file of the CA certificate(s) the broker's certificate must chain "
                                          "to (implies TLS)", metavar="FILE")
    mqtt_certfile: str | None = option(None, "PEM client certificate for brokers that require one (implies TLS)",
                                     metavar="FILE")
    mqtt_keyfile: str | None = option(None, "PEM private key of --mqtt-certfile (if not inside that file)",
                                    metavar="FILE")
    mqtt_keepalive: int = option(60, "MQTT keepalive in seconds")
    mqtt: DeliveryOptions = group(DeliveryOptions, prefix="mqtt", title="MQTT delivery", timeout=10.0,
                                  backoff_max=60.0)
    # --- GPIO -----------------------------------------------------------------------------------
    gpio_pin: int | None = option(None, "drive this GPIO output (BCM number) on alarm (Raspberry Pi, "
                                      "needs dcam-edge[gpio])", metavar="BCM")
    gpio_mode: str = option("pulse", "'pulse': on for --gpio-pulse-s per raise; 'hold': on while the alarm is active",
                          choices=("pulse", "hold"))
    gpio_pulse_s: float = option(1.0, "pulse length in seconds")
    gpio_active_high: bool = option(True, "pin is high when the output is on (--no-gpio-active-high inverts)")
    # --- external command -----------------------------------------------------------------------
    command: tuple[str, ...] = option((), "run this program per alarm (no shell); arguments may hold placeholders "
                                        + " ".join(f"{{{p}}}" for p in COMMAND_PLACEHOLDERS), metavar="'PROG ARG...'",
                                    split=split_command)
    command_timeout: float = option(10.0, "seconds before the command is killed")

    def __post_init__(self) -> None:
        for name in ("webhook_headers", "command"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        self.validate()

    # ------------------------------------------------------------------------------------------
    def enabled(self) -> list[str]:
        """Names of the sinks this configuration switches on."""
        switches = {"log": self.log_path, "snapshot": self.snapshot_dir, "webhook": self.webhook_url,
                    "mqtt": self.mqtt_host, "gpio": self.gpio_pin, "command": self.command or None}
        return [name for name, value in switches.items() if value is not None]

    def mqtt_spool_dir_resolved(self) -> str | None:
        """mqtt_spool_dir, else webhook_spool_dir (one outbox database for both)."""
        return self.mqtt.spool_dir or self.webhook.spool_dir or None

    def mqtt_password_resolved(self) -> str | None:
        """mqtt_password, else the DCAM_MQTT_PASSWORD environment variable (systemd EnvironmentFile)."""
        return self.mqtt_password if self.mqtt_password is not None else os.environ.get(MQTT_PASSWORD_ENV)

    def validate(self) -> None:
        """Raise SinkConfigError naming the first bad option."""
        _check("sink_queue_size", self.sink_queue_size, self.sink_queue_size >= 1, "an integer >= 1")
        self._validate_log_and_snapshots()
        self._validate_webhook()
        self._validate_mqtt()
        self._validate_gpio_and_command()

    def _validate_log_and_snapshots(self) -> None:
        _check("log_max_mb", self.log_max_mb, self.log_max_mb >= 0, "a size in MB >= 0")
        if self.log_path is not None:
            _check("log_path", self.log_path, self.log_path.strip() != "", "a file path or '-'")
        _check("snapshot_max_count", self.snapshot_max_count, self.snapshot_max_count >= 1, "an integer >= 1")
        _check("snapshot_max_mb", self.snapshot_max_mb, self.snapshot_max_mb > 0, "a size in MB > 0")
        _check("snapshot_format", self.snapshot_format, self.snapshot_format in ("jpg", "png"), "'jpg' or 'png'")

    def _validate_webhook(self) -> None:
        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url)
            _check("webhook_url", self.webhook_url, parts.scheme in ("http", "https") and bool(parts.netloc),
                   "an http:// or https:// URL")
            if not self.webhook.spool_dir:
                raise SinkConfigError(f"{_where('webhook_spool_dir')}: required when webhook_url is set "
                                      "(undelivered alarms are kept there)")
        self.webhook.validate("webhook")
        for header in self.webhook_headers:
            _check("webhook_headers", header, bool(_HEADER_RE.match(header)), "headers of the form 'Name: value'")

    def _validate_mqtt(self) -> None:
        if self.mqtt_host is not None:
            _check("mqtt_host", self.mqtt_host, self.mqtt_host.strip() != "", "a host name")
        _check("mqtt_port", self.mqtt_port, 1 <= self.mqtt_port <= 65535, "a port 1..65535")
        _check("mqtt_topic", self.mqtt_topic, self.mqtt_topic != "" and not set(self.mqtt_topic) & {"+", "#", "\0"},
               "a non-empty topic without wildcards")
        _check("mqtt_qos", self.mqtt_qos, self.mqtt_qos in (0, 1, 2), "0, 1 or 2")
        _check("mqtt_keepalive", self.mqtt_keepalive, self.mqtt_keepalive >= 1, "seconds >= 1")
        self.mqtt.validate("mqtt")
        for name in ("mqtt_ca_file", "mqtt_certfile", "mqtt_keyfile"):
            value = getattr(self, name)
            if value is not None:
                _check(name, value, value.strip() != "", "a file path")
        if self.mqtt_keyfile is not None and self.mqtt_certfile is None:
            raise SinkConfigError(f"{_where('mqtt_keyfile')}: needs {_where('mqtt_certfile')} (the certificate "
                                  "the key belongs to)")
        if self.mqtt_host is not None and not self.mqtt_spool_dir_resolved():
            raise SinkConfigError(f"{_where('mqtt_spool_dir')}: required when mqtt_host is set (undelivered alarms "
                                  "are kept there; or set webhook_spool_dir to share its outbox)")

    def _validate_gpio_and_command(self) -> None:
        if self.gpio_pin is not None:
            _check("gpio_pin", self.gpio_pin, self.gpio_pin >= 0, "a BCM pin number >= 0")
        _check("gpio_mode", self.gpio_mode, self.gpio_mode in ("pulse", "hold"), "'pulse' or 'hold'")
        _check("gpio_pulse_s", self.gpio_pulse_s, self.gpio_pulse_s > 0, "seconds > 0")
        _check("command_timeout", self.command_timeout, self.command_timeout > 0, "seconds > 0")
        for i, arg in enumerate(self.command):
            bad = placeholder_error(arg)
            if bad is not None:
                raise SinkConfigError(f"{_where('command')}: argument {i} {arg!r}: {bad}; "
                                      f"expected placeholders {', '.join(f'{{{p}}}' for p in COMMAND_PLACEHOLDERS)}"
                                      " (write {{ and }} for literal braces)")


_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+:\s*[^\r\n]*$")


def _where(name: str) -> str:
    """How the option ``name`` (a SinkConfig field, or ``<sink>_<delivery option>``) is set: flag and key."""
    f = next((f for f in fields(SinkConfig) if f.name == name), None)
    if f is not None and not f.metadata.get("cli", True):
        return f"[sinks] {name}"
    flag = (f.metadata.get("flag") if f is not None else None) or "--" + name.replace("_", "-")
    return f"{flag} / [sinks] {name}"


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise SinkConfigError(f"{_where(name)}: expected {expected}, got {value!r}")


def placeholder_error(arg: str) -> str | None:
    """Why a command argument's placeholders are invalid, or None."""
    try:
        parsed = list(string.Formatter().parse(arg))
    except ValueError as exc:
        return f"malformed braces ({exc})"
    for _literal, name, _spec, _conv in parsed:
        if name is not None and name not in COMMAND_PLACEHOLDERS:
            return f"unknown placeholder {{{name}}}"
    return None
