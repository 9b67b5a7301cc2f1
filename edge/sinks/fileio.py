"""Crash-safe file writes of the snapshot sink (and the outbox's import of the old file spool)."""
from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Persist a directory entry change (rename/unlink) — otherwise a power cut can undo it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """Write `data` to `path` so readers see the old file or the complete new one, never a part.

    Writes a hidden sibling ``.NAME.tmp``, fsyncs it, renames it over `path`, fsyncs the directory.
    """
    tmp = path.with_name("." + path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def remove_stale_tmp(directory: Path) -> int:
    """Delete ``.*.tmp`` leftovers of writes interrupted by a crash; returns how many."""
    n = 0
    for p in directory.glob("." + "*" + TMP_SUFFIX):
        p.unlink(missing_ok=True)
        n += 1
    return n
