"""Durable FIFO of undelivered messages: one fsync'd file per message, atomic rename, in-order replay.

Files are ``<seq:012d>.json`` with a sequence number that continues across restarts, so the order
survives clock jumps.  A ``.lock`` file (flock) makes sure only one process sends a spool.
Messages a receiver rejects permanently are moved to ``failed/`` (kept for inspection, not retried).
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
from collections import deque
from pathlib import Path

from .config import SinkConfigError
from .fileio import atomic_write, fsync_dir, remove_stale_tmp

log = logging.getLogger("edge.sinks")
_NAME_RE = re.compile(r"^(\d{12})\.json$")


class Spool:
    """Thread-safe: one writer thread appends, one sender thread peeks/removes."""

    def __init__(self, directory: str | Path, max_files: int = 10000) -> None:
        self.dir = Path(directory)
        self._max_files = max_files
        self._lock = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SinkConfigError(f"--webhook-spool-dir / [sinks] webhook_spool_dir: cannot use {self.dir} "
                                  f"({exc})") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SinkConfigError(f"--webhook-spool-dir / [sinks] webhook_spool_dir: {self.dir} is in use by "
                                  "another sender (one process per spool directory)") from None
        remove_stale_tmp(self.dir)  # half-written files of a crash were never acknowledged
        names = sorted(p.name for p in self.dir.iterdir() if _NAME_RE.match(p.name))
        self._pending: deque[str] = deque(names)
        self._next_seq = int(names[-1][:12]) + 1 if names else 1
        self.discarded = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def append(self, data: bytes) -> str:
        """Persist one message (fsync'd before this returns); discard the oldest beyond max_files."""
        with self._lock:
            name = f"{self._next_seq:012d}.json"
            self._next_seq += 1
        atomic_write(self.dir / name, data)
        with self._lock:
            self._pending.append(name)
            overflow = [self._pending.popleft() for _ in range(len(self._pending) - self._max_files)]
        for old in overflow:
            (self.dir / old).unlink(missing_ok=True)
            self.discarded += 1
            log.error("webhook spool %s full (%d): discarded undelivered alarm %s", self.dir, self._max_files, old)
        return name

    def peek(self) -> tuple[str, bytes] | None:
        """Oldest pending message (name, bytes), or None."""
        while True:
            with self._lock:
                if not self._pending:
                    return None
                name = self._pending[0]
            try:
                return name, (self.dir / name).read_bytes()
            except FileNotFoundError:  # discarded by append() meanwhile
                self._drop(name)

    def remove(self, name: str) -> None:
        """The message was delivered: delete it durably (else a power cut re-sends it)."""
        (self.dir / name).unlink(missing_ok=True)
        fsync_dir(self.dir)
        self._drop(name)

    def quarantine(self, name: str) -> Path:
        """Move a permanently rejected message to failed/ so it stops blocking the queue."""
        failed = self.dir / "failed"
        failed.mkdir(exist_ok=True)
        target = failed / name
        try:
            os.replace(self.dir / name, target)
        except FileNotFoundError:
            pass
        fsync_dir(self.dir)
        self._drop(name)
        return target

    def _drop(self, name: str) -> None:
        with self._lock:
            if self._pending and self._pending[0] == name:
                self._pending.popleft()
            else:
                try:
                    self._pending.remove(name)
                except ValueError:
                    pass

    def close(self) -> None:
        """Release the directory lock."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1
