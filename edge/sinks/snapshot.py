"""Snapshot sink: original frame + heatmap overlay + event JSON per alarm, bounded by count and size.

The frame is the source's: a camera frame as captured, an image file as decoded for the model (a large JPEG at
1/2–1/8 size when the manifest's ``input.decode`` is "reduced"; the event JSON names the file).

Files of one alarm share a key ``YYYYmmddTHHMMSS_ffffffZ_f<frame>_<event>`` (UTC, so names sort
oldest first): ``KEY.orig.jpg``, ``KEY.overlay.jpg``, ``KEY.json``.  Only files with that naming
are managed, so other files in the directory are never deleted.
"""
from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .base import Sink, event_payload
from .config import SinkConfig, SinkConfigError
from .fileio import atomic_write, fsync_dir, remove_stale_tmp

# Queued alarms carry two frame copies (≈12 MB at 1080p): cap the queue so an SD-card stall during an
# alarm burst costs at most ~100 MB of RAM on a Pi; the excess is dropped and counted.
MAX_IMAGE_QUEUE = 8
_NAME_RE = re.compile(r"^(\d{8}T\d{6}_\d{6}Z_f-?\d+_[a-z]+(?:_\d+)?)\.(orig\.(?:jpg|png)|overlay\.(?:jpg|png)|json)$")


class SnapshotSink(Sink):
    """Write per-alarm images atomically; delete the oldest alarms beyond max_count / max_mb."""

    kind = "snapshot"
    needs_images = True

    def __init__(self, directory: str, *, max_count: int = 500, max_mb: float = 200.0, fmt: str = "jpg",
                 **base: Any) -> None:
        base["queue_size"] = min(base.get("queue_size", MAX_IMAGE_QUEUE), MAX_IMAGE_QUEUE)
        super().__init__(**base)
        self._dir = Path(directory)
        self._max_count = max_count
        self._max_bytes = int(max_mb * 1024 * 1024)
        self._fmt = fmt
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            remove_stale_tmp(self._dir)
            self._groups = self._scan()
        except OSError as exc:
            raise SinkConfigError(f"--snapshot-dir / [sinks] snapshot_dir: cannot use {self._dir} ({exc})") from None
        self._enforce_bounds()  # limits may have been lowered since the last run

    @classmethod
    def from_config(cls, cfg: SinkConfig, metrics: Any = None) -> SnapshotSink:
        return cls(cfg.snapshot_dir or ".", max_count=cfg.snapshot_max_count, max_mb=cfg.snapshot_max_mb,
                   fmt=cfg.snapshot_format, queue_size=cfg.sink_queue_size, on_clear=cfg.on_clear, metrics=metrics)

    def _scan(self) -> OrderedDict[str, dict[str, int]]:
        """Existing snapshots grouped by alarm key, oldest first: key → {file name: bytes}."""
        groups: dict[str, dict[str, int]] = {}
        for p in self._dir.iterdir():
            m = _NAME_RE.match(p.name)
            if m and p.is_file():
                groups.setdefault(m.group(1), {})[p.name] = p.stat().st_size
        return OrderedDict(sorted(groups.items()))

    def total_bytes(self) -> int:
        return sum(sum(files.values()) for files in self._groups.values())

    def keys(self) -> list[str]:
        """Alarm keys currently kept, oldest first."""
        return list(self._groups)

    def _new_key(self, event: dict[str, Any]) -> str:
        stamp = datetime.fromtimestamp(time.time(), timezone.utc).strftime("%Y%m%dT%H%M%S_%fZ")
        frame = event.get("frame")
        kind = event.get("event") or "frame"
        key = f"{stamp}_f{int(frame) if frame is not None else 0}_{kind if kind.isalpha() else 'event'}"
        n, base = 1, key
        while key in self._groups:  # two alarms in the same microsecond
            n += 1
            key = f"{base}_{n}"
        return key

    def process(self, event: dict[str, Any], frame_bgr: np.ndarray | None, overlay_bgr: np.ndarray | None) -> None:
        key = self._new_key(event)
        files: dict[str, bytes] = {}
        for part, image in (("orig", frame_bgr), ("overlay", overlay_bgr)):
            if image is not None:
                files[f"{key}.{part}.{self._fmt}"] = _encode(image, self._fmt)
        files[f"{key}.json"] = json.dumps(event_payload(event), indent=1).encode()
        self._groups[key] = {}
        for name, data in files.items():
            atomic_write(self._dir / name, data, sync_dir=False)
            self._groups[key][name] = len(data)
        fsync_dir(self._dir)
        self._enforce_bounds()

    def _enforce_bounds(self) -> None:
        """Delete whole alarms, oldest first, until count and size fit (the newest is always kept)."""
        removed = False
        while len(self._groups) > 1 and (len(self._groups) > self._max_count
                                         or self.total_bytes() > self._max_bytes):
            _key, files = self._groups.popitem(last=False)
            for name in files:
                (self._dir / name).unlink(missing_ok=True)
            removed = True
        if removed:
            fsync_dir(self._dir)


def _encode(image: np.ndarray, fmt: str) -> bytes:
    ok, buf = cv2.imencode("." + fmt, image, [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == "jpg" else [])
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} {image.dtype} image as {fmt}")
    return buf.tobytes()
