"""Log sink: one JSON object per line (alarms, or every frame with log_all_frames), size-rotated."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from .base import Sink, event_json
from .config import SinkConfig, SinkConfigError


class JsonlSink(Sink):
    """Append event_payload() lines to a file ('-' = stdout); alarm lines are fsync'd."""

    kind = "log"

    def __init__(self, path: str, *, all_frames: bool = False, max_mb: float = 50.0, **base: Any) -> None:
        super().__init__(**base)
        self._path = path
        self._all_frames = all_frames
        self._max_bytes = int(max_mb * 1024 * 1024)
        self._file: IO[str] | None = None
        if path != "-":
            self._file = self._open()  # fail at start-up (permissions, missing mount), not at the first alarm

    @classmethod
    def from_config(cls, cfg: SinkConfig, metrics: Any = None) -> JsonlSink:
        return cls(cfg.log_path or "-", all_frames=cfg.log_all_frames, max_mb=cfg.log_max_mb,
                   queue_size=cfg.sink_queue_size, on_clear=cfg.on_clear, metrics=metrics)

    def wants(self, event: dict[str, Any]) -> bool:
        return self._all_frames or super().wants(event)

    def _open(self) -> IO[str]:
        try:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            return open(self._path, "a", encoding="utf-8")
        except OSError as exc:
            raise SinkConfigError(f"--log-path / [sinks] log_path: cannot append to {self._path} ({exc})") from None

    def process(self, event: dict[str, Any], frame_bgr: np.ndarray | None, overlay_bgr: np.ndarray | None) -> None:
        line = event_json(event) + "\n"
        if self._file is None:
            sys.stdout.write(line)
            sys.stdout.flush()
            return
        self._file.write(line)
        self._file.flush()
        if event.get("event") is not None:
            os.fsync(self._file.fileno())  # alarm lines survive a power cut; per-frame lines need not
        if self._max_bytes and self._file.tell() >= self._max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        """FILE → FILE.1 (replacing the previous FILE.1), then start a new FILE."""
        assert self._file is not None
        self._file.close()
        os.replace(self._path, self._path + ".1")
        self._file = self._open()

    def _shutdown(self, timeout: float) -> None:
        if self._file is not None:
            self._file.close()
