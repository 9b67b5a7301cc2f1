"""The durable outbox of every remote sink (webhook, MQTT, ...): SQLite from the standard library, WAL mode.

One database file, ``<dir>/outbox.sqlite3``, holds the undelivered alarms of every remote sink
pointed at that directory (``webhook_spool_dir``, ``mqtt_spool_dir``; the same directory = one
shared file).  Rows are tagged with the sink's name, so each sink only sees its own::

    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- delivery order, never reused (also across restarts)
        sink       TEXT    NOT NULL,                   -- 'webhook' | 'mqtt' | ...
        id         TEXT    NOT NULL,                   -- the alarm id (payload "id", Idempotency-Key)
        payload    BLOB    NOT NULL,                   -- exactly the bytes that are sent
        created    REAL    NOT NULL,                   -- unix time it was queued
        attempts   INTEGER NOT NULL DEFAULT 0,         -- failed delivery attempts so far
        last_error TEXT,                               -- reason of the last failed attempt / the rejection
        state      TEXT    NOT NULL DEFAULT 'pending'  -- 'pending' (to send) | 'rejected' (kept, never resent)
    )

Guarantees: ``put()`` returns once the row is committed with ``synchronous=FULL`` (survives a
crash or power cut); a row is deleted only by ``done()``, i.e. after the receiver confirmed it
(HTTP 2xx, MQTT PUBACK).  Bounded: at most ``max_pending`` pending rows per sink (beyond it the
oldest are deleted, counted and logged) and ``MAX_REJECTED`` rejected rows per sink.
A ``.outbox-<sink>.lock`` file (flock) makes sure only one process sends a sink's rows.

Inspect it with ``sqlite3 outbox.sqlite3 "SELECT seq, sink, id, attempts, last_error, state FROM outbox"``.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

from .config import SinkConfigError
from .fileio import fsync_dir, remove_stale_tmp

log = logging.getLogger("edge.sinks")

FILENAME = "outbox.sqlite3"
MAX_REJECTED = 1000  # permanently rejected alarms kept per sink for inspection (oldest deleted beyond)
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    sink       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created    REAL    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    state      TEXT    NOT NULL DEFAULT 'pending'
);
CREATE INDEX IF NOT EXISTS outbox_sink_state_seq ON outbox (sink, state, seq);
"""
_LEGACY_NAME_RE = re.compile(r"^(\d{12})\.json$")  # the file spool of dcam-edge <= 0.1 (one file per alarm)


class Outbox:
    """One sink's view of the outbox database; thread-safe (a writer thread and a sender thread share it)."""

    def __init__(self, directory: str | Path, sink: str, max_pending: int = 10000, *,
                 option: str = "spool_dir", import_legacy_spool: bool = False) -> None:
        self.dir = Path(directory)
        self.path = self.dir / FILENAME
        self.sink = sink
        self.discarded = 0  # pending alarms deleted by the bound (lost)
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._closed = False
        where = f"--{option.replace('_', '-')} / [sinks] {option}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / f".outbox-{sink}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SinkConfigError(f"{where}: cannot use {self.dir} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SinkConfigError(f"{where}: the {sink} outbox in {self.dir} is in use by another sender "
                                  "(one process per outbox and sink)") from None
        db: sqlite3.Connection | None = None
        try:
            db = self._open()
            self._db: sqlite3.Connection = db
            if import_legacy_spool:
                self._import_legacy_spool()
            self._pending = self._count("pending")
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            self._release_lock()
            raise SinkConfigError(f"{where}: cannot open the outbox {self.path} ({exc})") from None

    # ---- set-up ------------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: explicit BEGIN/COMMIT; check_same_thread=False: guarded by self._lock.
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode WAL not available (got {mode})")
            db.execute("PRAGMA synchronous=FULL")         # a committed put() survives a power cut
            db.execute("PRAGMA journal_size_limit=4194304")  # the WAL file shrinks back to <= 4 MiB
            db.execute("PRAGMA busy_timeout=10000")       # another sink's connection may be writing
            db.executescript(_SCHEMA)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            elif version > _SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"written by a newer dcam-edge (schema {version} > {_SCHEMA_VERSION})")
        except BaseException:
            db.close()
            raise
        return db

    def _import_legacy_spool(self) -> None:
        """Move ``<seq>.json`` files of the old one-file-per-alarm spool into the outbox, in order."""
        names = sorted(p.name for p in self.dir.iterdir() if _LEGACY_NAME_RE.match(p.name))
        if not names:
            return
        remove_stale_tmp(self.dir)
        rows = []
        for name in names:
            data = (self.dir / name).read_bytes()
            try:
                alarm = str(json.loads(data).get("id", ""))
            except (ValueError, AttributeError):
                alarm = ""
            rows.append((self.sink, alarm, data, (self.dir / name).stat().st_mtime))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO outbox (sink, id, payload, created) VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        for name in names:  # a crash before this point only means the files are imported (and sent) twice
            (self.dir / name).unlink(missing_ok=True)
        fsync_dir(self.dir)
        log.info("%s outbox %s: imported %d undelivered alarm(s) of the old file spool", self.sink, self.path,
                 len(names))

    def _count(self, state: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox WHERE sink = ? AND state = ?",
                                    (self.sink, state)).fetchone()[0])

    # ---- queue operations --------------------------------------------------------------------------
    def __len__(self) -> int:
        """Pending (not yet delivered) alarms of this sink; also valid after close()."""
        with self._lock:
            return self._pending

    def put(self, alarm_id: str, payload: bytes) -> int:
        """Persist one alarm (committed before this returns); returns how many old ones the bound discarded."""
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO outbox (sink, id, payload, created) VALUES (?, ?, ?, ?)",
                                 (self.sink, alarm_id, payload, time.time()))
                excess = self._pending + 1 - self._max_pending
                dropped: list[tuple[int, str]] = []
                if excess > 0:
                    dropped = self._db.execute(
                        "SELECT seq, id FROM outbox WHERE sink = ? AND state = 'pending' ORDER BY seq LIMIT ?",
                        (self.sink, excess)).fetchall()
                    self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _ in dropped])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._pending += 1 - len(dropped)
            self.discarded += len(dropped)
        for _seq, old in dropped:
            log.error("%s outbox %s full (%d): discarded undelivered alarm %s", self.sink, self.path,
                      self._max_pending, old)
        return len(dropped)

    def peek(self) -> tuple[int, str, bytes] | None:
        """Oldest pending alarm (seq, id, payload), or None."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT seq, id, payload FROM outbox WHERE sink = ? AND state = 'pending' "
                                   "ORDER BY seq LIMIT 1", (self.sink,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), bytes(row[2]))

    def done(self, seq: int) -> None:
        """The receiver confirmed the alarm: delete it (durably, else a power cut re-sends it)."""
        with self._lock:
            self._check_open()
            if self._db.execute("DELETE FROM outbox WHERE seq = ? AND state = 'pending'", (seq,)).rowcount:
                self._pending -= 1

    def failed_attempt(self, seq: int, reason: str) -> None:
        """Record a failed delivery attempt (the alarm stays pending and is retried)."""
        with self._lock:
            self._check_open()
            self._db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                             (reason[:500], seq))

    def reject(self, seq: int, reason: str) -> None:
        """The receiver will never accept it: keep it as 'rejected' (not resent), bounded to MAX_REJECTED."""
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._db.execute("UPDATE outbox SET state = 'rejected', attempts = attempts + 1, "
                                     "last_error = ? WHERE seq = ? AND state = 'pending'",
                                     (reason[:500], seq)).rowcount
                self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE sink = ? AND "
                                 "state = 'rejected' ORDER BY seq DESC LIMIT -1 OFFSET ?)", (self.sink, MAX_REJECTED))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._pending -= n

    def rejected(self) -> list[tuple[int, str, bytes, str]]:
        """Rejected alarms (seq, id, payload, reason), oldest first (for inspection and tests)."""
        with self._lock:
            self._check_open()
            rows = self._db.execute("SELECT seq, id, payload, last_error FROM outbox WHERE sink = ? AND "
                                    "state = 'rejected' ORDER BY seq", (self.sink,)).fetchall()
        return [(int(s), str(i), bytes(p), str(e)) for s, i, p, e in rows]

    def close(self) -> None:
        """Close the database and release the sender lock (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.close()
            finally:
                self._release_lock()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.sink} outbox {self.path} is closed")

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1
