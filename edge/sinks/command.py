"""Command sink: run an external program per alarm with an argv list (never a shell).

Each argument is a ``str.format`` template over the event (placeholders in
``COMMAND_PLACEHOLDERS``, e.g. ``{score:.3f}``); substituted values stay one argument each, so an
event field containing ``; rm -rf /`` reaches the program as literal text.  One command runs at a
time (the worker thread), killed after `timeout` seconds.
"""
from __future__ import annotations

import shutil
import string
import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import Sink, alarm_id, log
from .config import COMMAND_PLACEHOLDERS, SinkConfig, SinkConfigError, placeholder_error


class CommandFailed(RuntimeError):
    """The command exited non-zero or timed out (counted as a sink failure)."""


# The format-string conversions {x!r}, {x!s}, {x!a}.
_CONVERSIONS: dict[str, Callable[[object], str]] = {"r": repr, "s": str, "a": ascii}


def render_argv(template: tuple[str, ...] | list[str], event: dict[str, Any]) -> list[str]:
    """Substitute the event's fields into each argument (None → empty string).

    A format spec that does not fit the value (``{score:.3f}`` with no score) falls back to str(value),
    so a missing field never stops the alarm command from running.
    """
    values = {key: event.get(key) for key in COMMAND_PLACEHOLDERS}
    values["id"] = alarm_id(event)
    values = {k: ("" if v is None else v.item() if isinstance(v, np.generic) else v) for k, v in values.items()}
    out = []
    for arg in template:
        parts = []
        for literal, name, spec, conversion in string.Formatter().parse(arg):
            parts.append(literal)
            if name is None:
                continue
            value = values[name]
            if conversion:
                value = _CONVERSIONS[conversion](value)
            try:
                parts.append(format(value, spec or ""))
            except (ValueError, TypeError):
                parts.append(str(value))
        out.append("".join(parts))
    return out


class CommandSink(Sink):
    """subprocess.run(argv, shell=False) per alarm; stdout/stderr are captured, not inherited."""

    kind = "command"

    def __init__(self, argv: tuple[str, ...], *, timeout: float = 10.0, **base: Any) -> None:
        super().__init__(**base)
        if not argv:
            raise SinkConfigError("--command / [sinks] command: expected a program and its arguments, got nothing")
        for i, arg in enumerate(argv):
            bad = placeholder_error(arg)
            if bad is not None:
                raise SinkConfigError(f"--command / [sinks] command: argument {i} {arg!r}: {bad}")
        if shutil.which(argv[0]) is None:  # fail at start-up rather than at the first alarm
            raise SinkConfigError(f"--command / [sinks] command: program {argv[0]!r} not found or not executable")
        self._argv = tuple(argv)
        self._timeout = timeout

    @classmethod
    def from_config(cls, cfg: SinkConfig, metrics: Any = None) -> CommandSink:
        return cls(cfg.command, timeout=cfg.command_timeout, queue_size=cfg.sink_queue_size, on_clear=cfg.on_clear,
                   metrics=metrics)

    def process(self, event: dict[str, Any], frame_bgr: np.ndarray | None, overlay_bgr: np.ndarray | None) -> None:
        argv = render_argv(self._argv, event)
        try:
            result = subprocess.run(argv, shell=False, stdin=subprocess.DEVNULL, capture_output=True,
                                    timeout=self._timeout, check=False)
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"command {argv[0]} killed after {self._timeout:g} s") from None
        if result.returncode != 0:
            tail = result.stderr.decode(errors="replace").strip()[-300:]
            raise CommandFailed(f"command {argv[0]} exited {result.returncode}: {tail}")
        log.debug("command %s done", argv[0])
