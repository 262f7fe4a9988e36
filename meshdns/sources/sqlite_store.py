"""Durable records in one SQLite database under data_dir.

One generic table maps (kind, key) to a JSON value, so registrations and
config entries (e.g. service-splitter) share a database without a schema per
feature: a new kind is just a new string.

Writes go through one writer thread that group-commits whatever is queued, so
a burst of registrations costs one fsync and the event loop never waits on
the disk. Each caller's `apply` runs on the loop, in commit order, only after
its transaction is on disk: memory never shows what the disk does not have.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import queue
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger("meshdns.sources.sqlite")

SCHEMA_VERSION = 1
DB_NAME = "meshdns.db"


@dataclass(frozen=True, slots=True)
class Write:
    """Put `value` (JSON-able) at (kind, key); value None deletes it."""

    kind: str
    key: str
    value: Any = None


@dataclass(slots=True)
class _Batch:
    rows: tuple[tuple[str, str, str | None], ...]  # (kind, key, JSON text or None to delete)
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future | None
    apply: Callable[[], None] | None


_STOP = object()


class RecordStore:
    """(kind, key) -> JSON in SQLite (WAL, synchronous=FULL), group-committed by one thread."""

    def __init__(self, data_dir: str | Path):
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: written by a newer meshdns (schema {version})")
        self._db.execute("CREATE TABLE IF NOT EXISTS records ("
                         " kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                         " PRIMARY KEY (kind, key)) WITHOUT ROWID")
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="meshdns-sqlite", daemon=True)
        self._thread.start()
        self._closed = False
        self.commits = 0  # transactions written (one per group)

    def load(self, kind: str) -> dict[str, Any]:
        """Every record of one kind; a row that is not valid JSON is skipped and logged."""
        out = {}
        for key, value in self._db.execute("SELECT key, value FROM records WHERE kind = ?", (kind,)):
            try:
                out[key] = json.loads(value)
            except ValueError:
                log.error("%s: record %s/%s is not valid JSON; ignored", self.path, kind, key)
        return out

    async def commit(self, writes: Iterable[Write], apply: Callable[[], None] | None = None) -> None:
        """Write durably, then run `apply` on the loop (in commit order); raises on storage errors."""
        if self._closed:
            raise RuntimeError("record store is closed")
        rows = _rows(writes)  # a value that is not JSON fails here, before anything is queued
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Batch(rows, loop, future, apply))
        await future

    async def flush(self) -> None:
        """Wait until everything queued before this call (commit_soon too) is on disk."""
        await self.commit(())

    def commit_soon(self, writes: Iterable[Write]) -> None:
        """Queue a write nobody waits for (e.g. a check's last status); order is kept."""
        if not self._closed:
            self._queue.put(_Batch(_rows(writes), None, None, None))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    # -- writer thread ------------------------------------------------------

    def _writer(self) -> None:
        stop = False
        while not stop:
            batches = [self._queue.get()]
            while True:
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batches:
                stop = True
                batches = [b for b in batches if b is not _STOP]
            if batches:
                self._write(batches)
        self._db.close()

    def _write(self, batches: list[_Batch]) -> None:
        error: BaseException | None = None
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for batch in batches:
                for kind, key, text in batch.rows:
                    if text is None:
                        self._db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
                    else:
                        self._db.execute("INSERT OR REPLACE INTO records (kind, key, value) VALUES (?, ?, ?)",
                                         (kind, key, text))
            self._db.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # the thread must survive anything: callers are waiting
            error = diagnose(exc, self.path)
            log.error("writing %s failed: %s", self.path, error)
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        by_loop: dict[asyncio.AbstractEventLoop, list[_Batch]] = {}
        for batch in batches:
            if batch.loop is not None:
                by_loop.setdefault(batch.loop, []).append(batch)
        for loop, mine in by_loop.items():
            try:
                loop.call_soon_threadsafe(_finish, mine, error)
            except RuntimeError:  # loop already closed: nobody is waiting any more
                pass


def _rows(writes: Iterable[Write]) -> tuple[tuple[str, str, str | None], ...]:
    return tuple((w.kind, w.key, None if w.value is None else json.dumps(w.value, separators=(",", ":"),
                                                                        allow_nan=False))
                 for w in writes)


def _finish(batches: list[_Batch], error: BaseException | None) -> None:
    """Apply committed changes in order, even for a caller that stopped waiting."""
    for batch in batches:
        outcome: BaseException | None = error
        if error is None and batch.apply is not None:
            try:
                batch.apply()
            except Exception as exc:  # durable already; report the in-memory failure to its caller
                log.exception("applying a committed change failed")
                outcome = exc
        if batch.future is None or batch.future.done():
            continue
        if outcome is None:
            batch.future.set_result(None)
        else:
            batch.future.set_exception(outcome)


class StorageError(RuntimeError):
    """The database refused a write; nothing was changed.

    `reason` says why in words an operator acts on: "disk full", "read-only",
    "locked" or "I/O error" (all temporary from a client's point of view).
    """

    def __init__(self, message: str, *, reason: str = "I/O error"):
        super().__init__(message)
        self.reason = reason


_ERRNO_REASONS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk full", errno.EROFS: "read-only",
                  errno.EPERM: "read-only", errno.EACCES: "read-only"}


def diagnose(exc: BaseException, path: Path) -> StorageError:
    """Why a write failed, in terms an operator can act on.

    SQLite often reports only "disk I/O error", so on failure (rare) we ask
    the file system directly: create, write and fsync a probe file next to
    the database, and name what the kernel says (ENOSPC, EROFS, EPERM, ...).
    """
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        reason = "disk full"
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        reason = "locked"
    elif name.startswith("SQLITE_READONLY"):
        reason = "read-only"
    else:
        reason = _probe(path.parent) or ("read-only" if path.exists() and not os.access(path, os.W_OK)
                                         else "I/O error")
    detail = f"{exc}, {name}" if name else f"{type(exc).__name__}: {exc}"
    return StorageError(f"{reason}: cannot write {path} ({detail})", reason=reason)


def _probe(directory: Path) -> str | None:
    """Write one byte durably in `directory`; the errno of a failure, as a reason (None if it worked)."""
    probe = directory / ".meshdns-write-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return _ERRNO_REASONS.get(exc.errno, f"I/O error ({os.strerror(exc.errno)})" if exc.errno else None)
    return None
