"""SinkConfig: every alarm sink's settings, settable from CLI flags or the `[sinks]` TOML section.

One dataclass field ↔ one CLI flag (``--`` + field name with dashes; list fields take a
repeatable singular flag) ↔ one ``[sinks]`` key (the field name).  Flags override the file.
A sink is enabled by setting its "switch" field (``log_path``, ``snapshot_dir``,
``webhook_url``, ``mqtt_host``, ``gpio_pin``, ``command``); the others tune it.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import string
from dataclasses import MISSING, dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit


class SinkConfigError(ValueError):
    """A sink option has a bad value, or a sink cannot be set up (message names the option)."""


# Placeholders an external command's arguments may contain ({score:.3f} format specs allowed).
COMMAND_PLACEHOLDERS = ("id", "event", "score", "threshold", "alarm", "frame", "time", "latency_ms",
                        "path", "category", "model")

# Environment variable read when mqtt_password is unset (keeps secrets out of argv and the TOML file).
MQTT_PASSWORD_ENV = "DCAM_MQTT_PASSWORD"


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field carrying its CLI help (and optional 'choices', 'flag', 'cli', 'metavar')."""
    meta["help"] = help
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SinkConfig:
    """Settings of all alarm sinks (several may be enabled at once)."""

    # --- common -------------------------------------------------------------------------------
    on_clear: bool = _opt(False, "also send 'clear' events (alarm ended) to the sinks, not only 'raise'")
    sink_queue_size: int = _opt(256, "events buffered per sink (snapshot sink: at most 8) before new ones are "
                                      "dropped and counted (handle() never blocks the frame loop)")
    # --- log / JSONL ----------------------------------------------------------------------------
    log_path: str | None = _opt(None, "append alarms as JSON lines to this file ('-' = stdout / journald)",
                                metavar="FILE")
    log_all_frames: bool = _opt(False, "log every scored frame, not only alarm events")
    log_max_mb: float = _opt(50.0, "rotate the log file to FILE.1 when it exceeds this size (0 = never)")
    # --- snapshots ------------------------------------------------------------------------------
    snapshot_dir: str | None = _opt(None, "write original frame + heatmap overlay + event JSON per alarm here",
                                    metavar="DIR")
    snapshot_max_count: int = _opt(500, "keep at most this many alarm snapshots (oldest deleted first)")
    snapshot_max_mb: float = _opt(200.0, "keep snapshots below this total size in MB (oldest deleted first)")
    snapshot_format: str = _opt("jpg", "image format of snapshots", choices=("jpg", "png"))
    # --- HTTP webhook ---------------------------------------------------------------------------
    webhook_url: str | None = _opt(None, "POST each alarm as JSON to this http(s) URL", metavar="URL")
    webhook_timeout: float = _opt(5.0, "seconds per HTTP request")
    webhook_backoff: float = _opt(1.0, "seconds before the first retry; doubles per failed attempt")
    webhook_backoff_max: float = _opt(300.0, "cap of the retry delay in seconds (retries never stop)")
    webhook_spool_dir: str | None = _opt(None, "directory of the durable outbox (outbox.sqlite3, shared with MQTT): "
                                               "every alarm is committed there and removed only after a 2xx, "
                                               "re-sent in order, also after a restart; required with --webhook-url",
                                         metavar="DIR")
    webhook_spool_max: int = _opt(10000, "most undelivered webhook alarms kept in the outbox; beyond it the oldest "
                                         "are discarded")
    webhook_headers: tuple[str, ...] = _opt((), "extra HTTP header 'Name: value' (repeatable)",
                                            flag="--webhook-header", metavar="'NAME: VALUE'")
    # --- MQTT -----------------------------------------------------------------------------------
    mqtt_host: str | None = _opt(None, "publish alarms to this MQTT broker (needs dcam-edge[mqtt])", metavar="HOST")
    mqtt_port: int = _opt(1883, "MQTT broker port")
    mqtt_topic: str = _opt("dcam/alarm", "MQTT topic of alarm messages")
    mqtt_qos: int = _opt(1, "MQTT QoS of alarm messages", choices=(0, 1, 2))
    mqtt_retain: bool = _opt(False, "publish alarm messages with the retain flag")
    mqtt_client_id: str = _opt("", "MQTT client id (default: dcam-edge-<hostname>)")
    mqtt_username: str | None = _opt(None, "MQTT user name")
    mqtt_password: str | None = _opt(None, f"MQTT password (TOML or ${MQTT_PASSWORD_ENV} only: not a flag, "
                                           "argv is world-readable)", cli=False)
    mqtt_tls: bool = _opt(False, "connect to the broker with TLS (system CA certificates unless --mqtt-ca-file)")
    mqtt_ca_file: str | None = _opt(None, "PEM file of the CA certificate(s) the broker's certificate must chain "
                                          "to (implies TLS)", metavar="FILE")
    mqtt_certfile: str | None = _opt(None, "PEM client certificate for brokers that require one (implies TLS)",
                                     metavar="FILE")
    mqtt_keyfile: str | None = _opt(None, "PEM private key of --mqtt-certfile (if not inside that file)",
                                    metavar="FILE")
    mqtt_keepalive: int = _opt(60, "MQTT keepalive in seconds")
    mqtt_timeout: float = _opt(10.0, "seconds to wait for the broker: TCP/TLS connect, CONNACK, PUBACK")
    mqtt_backoff: float = _opt(1.0, "seconds before the first reconnect/retry; doubles per failed attempt")
    mqtt_backoff_max: float = _opt(60.0, "cap of the MQTT retry delay in seconds (retries never stop)")
    mqtt_spool_dir: str | None = _opt(None, "directory of the durable outbox (outbox.sqlite3): every alarm is "
                                            "committed there and removed only after the broker's PUBACK, also "
                                            "after a restart (default: --webhook-spool-dir; required otherwise)",
                                      metavar="DIR")
    mqtt_spool_max: int = _opt(10000, "most undelivered MQTT alarms kept in the outbox; beyond it the oldest "
                                      "are discarded")
    # --- GPIO -----------------------------------------------------------------------------------
    gpio_pin: int | None = _opt(None, "drive this GPIO output (BCM number) on alarm (Raspberry Pi, "
                                      "needs dcam-edge[gpio])", metavar="BCM")
    gpio_mode: str = _opt("pulse", "'pulse': on for --gpio-pulse-s per raise; 'hold': on while the alarm is active",
                          choices=("pulse", "hold"))
    gpio_pulse_s: float = _opt(1.0, "pulse length in seconds")
    gpio_active_high: bool = _opt(True, "pin is high when the output is on (--no-gpio-active-high inverts)")
    # --- external command -----------------------------------------------------------------------
    command: tuple[str, ...] = _opt((), "run this program per alarm (no shell); arguments may hold placeholders "
                                        + " ".join("{%s}" % p for p in COMMAND_PLACEHOLDERS), metavar="'PROG ARG...'")
    command_timeout: float = _opt(10.0, "seconds before the command is killed")

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
        return self.mqtt_spool_dir or self.webhook_spool_dir or None

    def mqtt_password_resolved(self) -> str | None:
        """mqtt_password, else the DCAM_MQTT_PASSWORD environment variable (systemd EnvironmentFile)."""
        return self.mqtt_password if self.mqtt_password is not None else os.environ.get(MQTT_PASSWORD_ENV)

    def validate(self) -> None:
        """Raise SinkConfigError naming the first bad option."""
        _check(self, "sink_queue_size", self.sink_queue_size >= 1, "an integer >= 1")
        _check(self, "log_max_mb", self.log_max_mb >= 0, "a size in MB >= 0")
        if self.log_path is not None:
            _check(self, "log_path", self.log_path.strip() != "", "a file path or '-'")
        _check(self, "snapshot_max_count", self.snapshot_max_count >= 1, "an integer >= 1")
        _check(self, "snapshot_max_mb", self.snapshot_max_mb > 0, "a size in MB > 0")
        _check(self, "snapshot_format", self.snapshot_format in ("jpg", "png"), "'jpg' or 'png'")
        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url)
            _check(self, "webhook_url", parts.scheme in ("http", "https") and bool(parts.netloc),
                   "an http:// or https:// URL")
            if not self.webhook_spool_dir:
                raise SinkConfigError(f"{_where('webhook_spool_dir')}: required when webhook_url is set "
                                      "(undelivered alarms are kept there)")
        _check(self, "webhook_timeout", self.webhook_timeout > 0, "seconds > 0")
        _check(self, "webhook_backoff", self.webhook_backoff > 0, "seconds > 0")
        _check(self, "webhook_backoff_max", self.webhook_backoff_max >= self.webhook_backoff,
               f"seconds >= webhook_backoff ({self.webhook_backoff})")
        _check(self, "webhook_spool_max", self.webhook_spool_max >= 1, "an integer >= 1")
        for header in self.webhook_headers:
            _check(self, "webhook_headers", bool(_HEADER_RE.match(header)), "headers of the form 'Name: value'",
                   value=header)
        if self.mqtt_host is not None:
            _check(self, "mqtt_host", self.mqtt_host.strip() != "", "a host name")
        _check(self, "mqtt_port", 1 <= self.mqtt_port <= 65535, "a port 1..65535")
        _check(self, "mqtt_topic", self.mqtt_topic != "" and not set(self.mqtt_topic) & {"+", "#", "\0"},
               "a non-empty topic without wildcards")
        _check(self, "mqtt_qos", self.mqtt_qos in (0, 1, 2), "0, 1 or 2")
        _check(self, "mqtt_keepalive", self.mqtt_keepalive >= 1, "seconds >= 1")
        _check(self, "mqtt_timeout", self.mqtt_timeout > 0, "seconds > 0")
        _check(self, "mqtt_backoff", self.mqtt_backoff > 0, "seconds > 0")
        _check(self, "mqtt_backoff_max", self.mqtt_backoff_max >= self.mqtt_backoff,
               f"seconds >= mqtt_backoff ({self.mqtt_backoff})")
        _check(self, "mqtt_spool_max", self.mqtt_spool_max >= 1, "an integer >= 1")
        for name in ("mqtt_ca_file", "mqtt_certfile", "mqtt_keyfile"):
            value = getattr(self, name)
            if value is not None:
                _check(self, name, value.strip() != "", "a file path")
        if self.mqtt_keyfile is not None and self.mqtt_certfile is None:
            raise SinkConfigError(f"{_where('mqtt_keyfile')}: needs {_where('mqtt_certfile')} (the certificate "
                                  "the key belongs to)")
        if self.mqtt_host is not None and not self.mqtt_spool_dir_resolved():
            raise SinkConfigError(f"{_where('mqtt_spool_dir')}: required when mqtt_host is set (undelivered alarms "
                                  "are kept there; or set webhook_spool_dir to share its outbox)")
        if self.gpio_pin is not None:
            _check(self, "gpio_pin", self.gpio_pin >= 0, "a BCM pin number >= 0")
        _check(self, "gpio_mode", self.gpio_mode in ("pulse", "hold"), "'pulse' or 'hold'")
        _check(self, "gpio_pulse_s", self.gpio_pulse_s > 0, "seconds > 0")
        _check(self, "command_timeout", self.command_timeout > 0, "seconds > 0")
        for i, arg in enumerate(self.command):
            bad = placeholder_error(arg)
            if bad is not None:
                raise SinkConfigError(f"{_where('command')}: argument {i} {arg!r}: {bad}; "
                                      f"expected placeholders {', '.join('{%s}' % p for p in COMMAND_PLACEHOLDERS)}"
                                      " (write {{ and }} for literal braces)")


_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+:\s*[^\r\n]*$")


def _flag(name: str) -> str:
    f = next(f for f in fields(SinkConfig) if f.name == name)
    return f.metadata.get("flag", "--" + name.replace("_", "-"))


def _where(name: str) -> str:
    f = next(f for f in fields(SinkConfig) if f.name == name)
    if f.metadata.get("cli", True):
        return f"{_flag(name)} / [sinks] {name}"
    return f"[sinks] {name}"


def _check(cfg: SinkConfig, name: str, ok: bool, expected: str, value: Any = MISSING) -> None:
    if not ok:
        got = getattr(cfg, name) if value is MISSING else value
        raise SinkConfigError(f"{_where(name)}: expected {expected}, got {got!r}")


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


# ---- CLI and TOML ---------------------------------------------------------------------------------

def _kind(f: Any) -> str:
    """'bool' | 'int' | 'float' | 'str' | 'list' from the field's annotation string."""
    ann = str(f.type)
    for kind in ("bool", "int", "float", "str"):
        if ann.startswith(kind):
            return kind
    return "list"


def add_sink_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per SinkConfig field (all default to None = 'not given', so the file can fill them)."""
    group = parser.add_argument_group("alarm sinks (also settable in the [sinks] section of --config)")
    for f in fields(SinkConfig):
        if not f.metadata.get("cli", True):
            continue
        kind = _kind(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata["help"]}
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "command":
            kwargs["metavar"] = f.metadata.get("metavar")
        elif kind == "list":
            kwargs.update(action="append", metavar=f.metadata.get("metavar"))
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[kind]
            for key in ("choices", "metavar"):
                if key in f.metadata:
                    kwargs[key] = f.metadata[key]
        if kind != "bool" and f.default not in (MISSING, None, ""):
            kwargs["help"] += f" (default: {f.default})"
        group.add_argument(_flag(f.name), **kwargs)


def _coerce(name: str, kind: str, value: Any, where: str) -> Any:
    """A TOML/CLI value as the field's type, or SinkConfigError naming where it came from."""
    if name == "command" and isinstance(value, str):
        try:
            return tuple(shlex.split(value))  # split like a shell would, but it is never run by one
        except ValueError as exc:
            raise SinkConfigError(f"{where}: cannot split {value!r} into arguments ({exc})") from None
    ok = {"bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str),
          "list": isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)}[kind]
    if not ok:
        expected = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
                    "list": "a list of strings"}[kind]
        raise SinkConfigError(f"{where}: expected {expected}, got {value!r}")
    return float(value) if kind == "float" else tuple(value) if kind == "list" else value


def sink_config_from_args(args: argparse.Namespace, file_section: dict | None = None) -> SinkConfig:
    """SinkConfig from defaults ← `[sinks]` file section ← CLI flags (later wins)."""
    by_name = {f.name: f for f in fields(SinkConfig)}
    values: dict[str, Any] = {}
    for key, value in (file_section or {}).items():
        if key not in by_name:
            raise SinkConfigError(f"[sinks] {key}: unknown key; expected one of {', '.join(by_name)}")
        values[key] = _coerce(key, _kind(by_name[key]), value, f"[sinks] {key}")
    for name, f in by_name.items():
        value = getattr(args, name, None) if f.metadata.get("cli", True) else None
        if value is not None:
            values[name] = _coerce(name, _kind(f), value, _flag(name))
    return SinkConfig(**values)

