"""Durable records in one SQLite database under data_dir.

One generic table maps (kind, key) to a JSON value, so registrations and
config entries (e.g. service-splitter) share a database without a schema per
feature: a new kind is just a new string.

Revisions are etcd's: the store has one persisted, monotonic revision that each
transaction which changes something increments, and each record keeps the
revision that created it and the one that last changed it (its create and mod
revision). A key deleted and written again is created anew. They become the
API's CreateIndex/ModifyIndex, and carry over unchanged to an etcd store.

Writes go through one writer thread that group-commits whatever is queued, so
a burst of registrations costs one fsync and the event loop never waits on
the disk. Each caller's `commit` is its own transaction (its own revision),
even when it shares an fsync with others. Each caller's `apply` runs on the
loop, in commit order, only after its transaction is on disk, and sees the
new revisions: memory never shows what the disk does not have.
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

from ..catalog.model import Revision

log = logging.getLogger("meshdns.sources.sqlite")

SCHEMA_VERSION = 2   # 1: records without revisions
DB_NAME = "meshdns.db"


@dataclass(frozen=True, slots=True)
class Write:
    """Put `value` (JSON-able) at (kind, key); value None deletes it.

    `if_changed`: a put of the value already stored changes nothing (the key keeps its revisions),
    as re-registering an unchanged service does in Consul. Otherwise every put is a change, as in etcd."""

    kind: str
    key: str
    value: Any = None
    if_changed: bool = False


_Row = tuple[str, str, "str | None", bool]   # (kind, key, JSON text or None to delete, if_changed)


@dataclass(slots=True)
class _Batch:
    rows: tuple[_Row, ...]
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future | None
    apply: Callable[[], None] | None
    revision: int = 0                                   # set by the writer: the store revision after it
    changed: tuple[tuple[str, str, Revision | None], ...] = ()   # set by the writer: keys it changed


_STOP = object()


class RecordStore:
    """(kind, key) -> JSON in SQLite (WAL, synchronous=FULL), group-committed by one thread, revisioned.

    `on_commit(revision)` runs on the loop after each group of transactions is applied (the catalog
    keeps X-Consul-Index at or above the store revision with it)."""

    def __init__(self, data_dir: str | Path, *, on_commit: Callable[[int], None] | None = None):
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self.on_commit = on_commit
        self.upgraded_from: int | None = None   # the schema this open migrated from, if it did
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()
        # the revisions as the loop knows them: updated in commit order, before each caller's apply
        self.revision = self._db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        self._revisions: dict[tuple[str, str], Revision] = {
            (kind, key): Revision(create, mod) for kind, key, create, mod in self._db.execute(
                "SELECT kind, key, create_revision, mod_revision FROM records")}
        self._written = self.revision   # the writer thread's own count
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="meshdns-sqlite", daemon=True)
        self._thread.start()
        self._closed = False
        self.commits = 0  # SQLite transactions written (one per group)

    def _migrate(self) -> None:
        """Create the schema, or bring an older one up to date in one transaction (a crash leaves it as it
        was). Schema 1 had no revisions: its records become revision 1, the store's revision 1."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: written by a newer meshdns (schema {version})")
        if version == SCHEMA_VERSION:
            return
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if "records" not in tables:
                self._db.execute("CREATE TABLE records ("
                                 " kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                                 " create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL,"
                                 " PRIMARY KEY (kind, key)) WITHOUT ROWID")
            else:
                for column in ("create_revision", "mod_revision"):
                    self._db.execute(f"ALTER TABLE records ADD COLUMN {column} INTEGER NOT NULL DEFAULT 1")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
                             " WITHOUT ROWID")
            rows = self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', ?)", (1 if rows else 0,))
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        if version:
            self.upgraded_from = version
            log.info("%s: schema %d -> %d (%d records kept, at revision 1)", self.path, version, SCHEMA_VERSION,
                     rows)

    def load(self, kind: str) -> dict[str, Any]:
        """Every record of one kind; a row that is not valid JSON is skipped and logged."""
        out = {}
        for key, value in self._db.execute("SELECT key, value FROM records WHERE kind = ?", (kind,)):
            try:
                out[key] = json.loads(value)
            except ValueError:
                log.error("%s: record %s/%s is not valid JSON; ignored", self.path, kind, key)
        return out

    def revision_of(self, kind: str, key: str) -> Revision | None:
        """The key's create and mod revision (None: no such key), as of the last applied commit."""
        return self._revisions.get((kind, key))

    async def commit(self, writes: Iterable[Write], apply: Callable[[], None] | None = None) -> None:
        """Write durably (one transaction, one new revision if anything changed), then run `apply` on the
        loop (in commit order, seeing the new revisions); raises on storage errors."""
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
            try:
                loop = asyncio.get_running_loop()   # its revisions are applied there, in order
            except RuntimeError:
                loop = None
            self._queue.put(_Batch(_rows(writes), loop, None, None))

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
        before = self._written
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for batch in batches:
                self._write_batch(batch)
            if self._written != before:
                self._db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (self._written,))
            self._db.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # the thread must survive anything: callers are waiting
            self._written = before
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
                loop.call_soon_threadsafe(self._finish, mine, error)
            except RuntimeError:  # loop already closed: nobody is waiting any more
                pass

    def _write_batch(self, batch: _Batch) -> None:
        """One caller's transaction: the next revision if it changes anything."""
        revision = self._written + 1
        changed = []
        for kind, key, text, if_changed in batch.rows:
            row = self._db.execute("SELECT value, create_revision FROM records WHERE kind = ? AND key = ?",
                                   (kind, key)).fetchone()
            if text is None:
                if row is not None:
                    self._db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
                    changed.append((kind, key, None))
                continue
            if row is not None and if_changed and row[0] == text:
                continue
            create = row[1] if row is not None else revision
            self._db.execute("INSERT OR REPLACE INTO records (kind, key, value, create_revision, mod_revision)"
                             " VALUES (?, ?, ?, ?, ?)", (kind, key, text, create, revision))
            changed.append((kind, key, Revision(create, revision)))
        if changed:
            self._written = revision
        batch.revision, batch.changed = self._written, tuple(changed)

    def _finish(self, batches: list[_Batch], error: BaseException | None) -> None:
        """On the loop: take in the new revisions and apply committed changes in order, even for a caller
        that stopped waiting."""
        for batch in batches:
            outcome: BaseException | None = error
            if error is None:
                for kind, key, revision in batch.changed:
                    if revision is None:
                        self._revisions.pop((kind, key), None)
                    else:
                        self._revisions[(kind, key)] = revision
                self.revision = max(self.revision, batch.revision)
                if batch.apply is not None:
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
        if error is None and self.on_commit is not None:
            try:
                self.on_commit(self.revision)
            except Exception:
                log.exception("on_commit failed")


def _rows(writes: Iterable[Write]) -> tuple[_Row, ...]:
    return tuple((w.kind, w.key, None if w.value is None else json.dumps(w.value, separators=(",", ":"),
                                                                        allow_nan=False), w.if_changed)
                 for w in writes)


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
