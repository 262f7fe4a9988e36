"""The embedded backend: etcd's revisioned key space as a log in one SQLite file.

`log` holds every change (kine-style: the revision, the key's create and
previous mod revision, a deleted flag, the lease); `kv` holds the current
state so a list never scans history. One writer thread group-commits queued
transactions (one fsync per group, the event loop never waits on the disk);
each transaction still takes its own revision. Watches are fed in-process
after the commit, and a watcher that falls `watch_buffer` revisions behind is
caught up from the log, as etcd does, or told `Compacted` if that history is
gone. Leases are timers on the loop; after a restart every lease gets its
full TTL again (as etcd's leases do when the leader changes).
"""
from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .disk import diagnose
from .kv import (DELETE, PUT, Batch, Compacted, Compare, Event, InvalidRequest, KeyValue, Op, Put,
                 StoreError, StoreUnavailable, check_ops, prefix_end)

log = logging.getLogger("meshdns.store.sqlite")

DB_NAME = "store.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, revision INTEGER NOT NULL, key BLOB NOT NULL,
  value BLOB NOT NULL, create_revision INTEGER NOT NULL, prev_revision INTEGER NOT NULL,
  version INTEGER NOT NULL, deleted INTEGER NOT NULL, lease INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS log_revision ON log (revision);
CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL, create_revision INTEGER NOT NULL,
  mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compacted', 0);
"""
_KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease"


@dataclass(slots=True)
class _Request:
    run: Callable[[], Any]  # runs on the writer thread inside the group's transaction
    future: asyncio.Future


@dataclass(slots=True, eq=False)
class _Subscriber:
    start: bytes
    end: bytes
    limit: int
    batches: collections.deque = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False


class SqliteKV:
    backend = "sqlite"

    def __init__(self, data_dir: str | Path, *, watch_buffer: int = 1024, retain: int = 10_000):
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self._lock_fd = os.open(directory / "store.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise StoreError(f"{self.path}: in use by another meshdns process") from None
        self._db = self._connect()
        self._db.executescript(SCHEMA)
        self._reader = self._connect()
        self._read_lock = threading.Lock()
        self._revision, self._compacted = self._meta(self._db)
        self._watch_buffer = watch_buffer
        self._retain = retain
        self._loop = asyncio.get_running_loop()
        self._subscribers: set[_Subscriber] = set()
        self._published = self._revision   # the last revision handed to the watches (the loop's view)
        self._leases: dict[int, tuple[int, asyncio.TimerHandle]] = {}
        for lease, ttl in self._db.execute("SELECT id, ttl FROM leases"):
            self._arm(lease, ttl)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="meshdns-store", daemon=True)
        self._thread.start()
        self._closed = False

    def __repr__(self) -> str:
        return f"sqlite {self.path}"

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    @staticmethod
    def _meta(db: sqlite3.Connection) -> tuple[int, int]:
        values = dict(db.execute("SELECT name, value FROM meta"))
        return values["revision"], values["compacted"]

    # -- reads (a reader connection on a worker thread) -----------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def run():
            with self._read_lock:
                self._reader.execute("BEGIN")
                try:
                    return fn(self._reader)
                finally:
                    self._reader.execute("COMMIT")
        return await asyncio.to_thread(run)

    async def list(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        def read(db):
            rows = db.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                              (prefix, prefix_end(prefix))).fetchall()
            return [KeyValue(*row) for row in rows], self._meta(db)[0]
        return await self._read(read)

    async def _history(self, start: bytes, end: bytes, from_revision: int) -> list[Batch]:
        """Batches from the log at `from_revision` and later; raises Compacted if that is gone."""
        def read(db):
            compacted = self._meta(db)[1]
            if from_revision < compacted:
                raise Compacted(compacted)
            return db.execute("SELECT revision, key, value, create_revision, version, deleted, lease FROM log"
                              " WHERE revision >= ? AND key >= ? AND key < ? ORDER BY id",
                              (from_revision, start, end)).fetchall()
        rows = await self._read(read)
        batches: list[Batch] = []
        events: list[Event] = []
        for i, (rev, key, value, created, version, deleted, lease) in enumerate(rows):
            events.append(_event(rev, key, value, created, version, deleted, lease))
            if i + 1 == len(rows) or rows[i + 1][0] != rev:
                batches.append(Batch(rev, tuple(events)))
                events = []
        return batches

    async def watch(self, prefix: bytes, start_revision: int) -> "_Watch":
        self._check_open()
        watch = _Watch(self, prefix, prefix_end(prefix), start_revision)
        await watch.sync()
        return watch

    def _subscribe(self, start: bytes, end: bytes) -> _Subscriber:
        sub = _Subscriber(start, end, self._watch_buffer)
        self._subscribers.add(sub)
        return sub

    def _publish(self, batch: Batch) -> None:
        self._published = max(self._published, batch.revision)
        for sub in list(self._subscribers):
            events = tuple(e for e in batch.events if sub.start <= e.kv.key < sub.end)
            if not events:
                continue
            if len(sub.batches) >= sub.limit:  # a slow watcher catches up from the log later
                sub.overflowed = True
                sub.batches.clear()
                self._subscribers.discard(sub)
            else:
                sub.batches.append(Batch(batch.revision, events))
            sub.wakeup.set()

    # -- writes (the writer thread) --------------------------------------------

    async def _submit(self, run: Callable[[], Any]) -> Any:
        self._check_open()
        future = self._loop.create_future()
        self._queue.put(_Request(run, future))
        return await future

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> tuple[bool, int]:
        check_ops(success)
        check_ops(failure)
        return await self._submit(lambda: self._txn(compare, success, failure))

    async def grant(self, ttl: int) -> int:
        if ttl <= 0:
            raise InvalidRequest(f"lease TTL must be positive, not {ttl}")
        lease = int.from_bytes(os.urandom(8), "big") >> 1 or 1
        await self._submit(lambda: self._db.execute("INSERT INTO leases VALUES (?, ?)", (lease, ttl)))
        self._arm(lease, ttl)
        return lease

    async def keepalive(self, lease: int) -> int:
        self._check_open()
        if lease not in self._leases:
            return 0
        ttl, _ = self._leases[lease]
        self._arm(lease, ttl)
        return ttl

    async def revoke(self, lease: int) -> None:
        entry = self._leases.pop(lease, None)
        if entry is not None:
            entry[1].cancel()
        await self._submit(lambda: self._revoke(lease))

    async def compact(self, revision: int) -> None:
        await self._submit(lambda: self._compact(revision))

    @property
    def fresh(self) -> bool:
        """Nothing was ever written (or only an import at revision 1)."""
        return self._revision <= 1

    async def restore(self, entries: Sequence[KeyValue], revision: int) -> bool:
        """Load `entries`, revisions as given, into a store that was never written, now at `revision` (history
        before it is gone); False, and nothing done, when the store was written before."""
        restored = await self._submit(lambda: self._restore(entries, revision))
        self._published = max(self._published, self._revision)
        return restored

    def _restore(self, entries: Sequence[KeyValue], revision: int) -> bool:
        if self._revision > 1 or self._db.execute("SELECT 1 FROM kv LIMIT 1").fetchone() is not None:
            return False
        revision = max([revision, 1] + [kv.mod_revision for kv in entries])
        self._db.executemany("INSERT INTO kv VALUES (?, ?, ?, ?, ?, 0)",
                             [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in entries])
        self._db.execute("UPDATE meta SET value = ? WHERE name IN ('revision', 'compacted')", (revision,))
        self._revision = self._compacted = revision
        return True

    def _arm(self, lease: int, ttl: int) -> None:
        old = self._leases.get(lease)
        if old is not None:
            old[1].cancel()
        self._leases[lease] = (ttl, self._loop.call_later(ttl, self._expire, lease))

    def _expire(self, lease: int) -> None:
        self._leases.pop(lease, None)
        if self._closed:
            return
        future = self._loop.create_future()
        future.add_done_callback(lambda f: _log_failure(f, f"expiring lease {lease:x}"))
        self._queue.put(_Request(lambda: self._revoke(lease), future))

    def _writer(self) -> None:
        while True:
            requests = [self._queue.get()]
            while True:
                try:
                    requests.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in requests
            requests = [r for r in requests if r is not None]
            if requests:
                self._write(requests)
            if stop:
                break
        self._db.close()
        self._reader.close()

    def _write(self, requests: list[_Request]) -> None:
        outcomes: list[tuple[_Request, Any, BaseException | None, list[Batch]]] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            revision, compacted = self._revision, self._compacted
            for request in requests:
                self._pending: list[Batch] = []
                self._db.execute("SAVEPOINT request")
                try:
                    result = request.run()
                except StoreError as exc:
                    self._db.execute("ROLLBACK TO request")
                    self._revision, self._compacted = self._meta(self._db)
                    outcomes.append((request, None, exc, []))
                else:
                    outcomes.append((request, result, None, self._pending))
                self._db.execute("RELEASE request")
            self._db.execute("COMMIT")
        except Exception as exc:  # nothing of the group is on disk: every caller hears why
            cause = diagnose(exc, self.path)  # its .reason says "disk full", "read-only"...
            log.error("writing %s failed: %s", self.path, cause)
            error = StoreUnavailable(str(cause))
            error.__cause__ = cause
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._revision, self._compacted = revision, compacted
            outcomes = [(request, None, error, []) for request in requests]
        else:
            self._auto_compact()
        try:
            self._loop.call_soon_threadsafe(self._deliver, outcomes)
        except RuntimeError:  # the loop is gone: nobody is waiting any more
            pass

    def _deliver(self, outcomes) -> None:
        """On the loop, in commit order: feed the watches, then answer the caller."""
        for request, result, error, batches in outcomes:
            for batch in batches:
                self._publish(batch)
            if request.future.done():
                continue
            if error is None:
                request.future.set_result(result)
            else:
                request.future.set_exception(error)

    def _txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> tuple[bool, int]:
        db = self._db
        succeeded = all(_compare(c, db.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE key = ?",
                                               (c.key,)).fetchone()) for c in compare)
        ops = success if succeeded else failure
        leases = {op.lease for op in ops if isinstance(op, Put) and op.lease}
        for lease in leases:
            if db.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone() is None:
                raise InvalidRequest("requested lease not found")
        revision = self._revision + 1
        events: list[Event] = []
        for op in ops:
            if isinstance(op, Put):
                old = db.execute("SELECT create_revision, mod_revision, version FROM kv WHERE key = ?",
                                 (op.key,)).fetchone()
                created, prev, version = (old[0], old[1], old[2] + 1) if old else (revision, 0, 1)
                db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
                           (op.key, op.value, created, revision, version, op.lease))
                self._log(revision, op.key, op.value, created, prev, version, False, op.lease)
                events.append(Event(PUT, KeyValue(op.key, op.value, created, revision, version, op.lease)))
            else:
                events.extend(self._delete(revision, op.key, prefix_end(op.key) if op.prefix else op.key + b"\0"))
        if events:
            self._advance(revision, events)
        return succeeded, self._revision

    def _delete(self, revision: int, start: bytes, end: bytes, lease: int | None = None) -> list[Event]:
        where, args = ("lease = ?", (lease,)) if lease is not None else ("key >= ? AND key < ?", (start, end))
        rows = self._db.execute(f"SELECT key, mod_revision FROM kv WHERE {where} ORDER BY key", args).fetchall()
        for key, prev in rows:
            self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._log(revision, key, b"", 0, prev, 0, True, 0)
        return [Event(DELETE, KeyValue(key, b"", 0, revision, 0)) for key, _ in rows]

    def _log(self, revision, key, value, created, prev, version, deleted, lease) -> None:
        self._db.execute("INSERT INTO log (revision, key, value, create_revision, prev_revision, version, deleted,"
                         " lease) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (revision, key, value, created, prev, version, int(deleted), lease))

    def _advance(self, revision: int, events: list[Event]) -> None:
        self._revision = revision
        self._db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        self._pending.append(Batch(revision, tuple(events)))

    def _revoke(self, lease: int) -> None:
        self._db.execute("DELETE FROM leases WHERE id = ?", (lease,))
        events = self._delete(self._revision + 1, b"", b"", lease=lease)
        if events:
            self._advance(self._revision + 1, events)

    def _compact(self, revision: int) -> None:
        if revision <= self._compacted:
            raise Compacted(self._compacted)
        if revision > self._revision:
            raise InvalidRequest(f"required revision {revision} is a future revision (now {self._revision})")
        self._db.execute("DELETE FROM log WHERE revision < ?", (revision,))
        self._db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (revision,))
        self._compacted = revision

    def _auto_compact(self) -> None:
        """Keep about `retain` revisions of history (etcd is run with auto-compaction for the same reason)."""
        if self._revision - max(self._compacted, 1) < 2 * self._retain:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._compact(self._revision - self._retain)
            self._db.execute("COMMIT")
        except Exception as exc:  # history only: the next group tries again
            log.warning("compacting %s failed: %s", self.path, exc)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._revision, self._compacted = self._meta(self._db)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _, timer in self._leases.values():
            timer.cancel()
        self._leases.clear()
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        os.close(self._lock_fd)  # releases the lock
        for sub in self._subscribers:
            sub.wakeup.set()
        self._subscribers.clear()


def _log_failure(future: asyncio.Future, what: str) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("%s failed: %s", what, future.exception())


def _event(revision, key, value, created, version, deleted, lease) -> Event:
    if deleted:
        return Event(DELETE, KeyValue(key, b"", 0, revision, 0))
    return Event(PUT, KeyValue(key, value, created, revision, version, lease))


_RESULTS = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b, ">": lambda a, b: a > b}


def _compare(c: Compare, row: tuple | None) -> bool:
    """etcd's applyCompare for one key: a value compare on a missing key is false, numbers are 0."""
    if row is None:
        if c.target == "value":
            return False
        actual: Any = 0
    else:
        kv = KeyValue(*row)
        actual = {"value": kv.value, "version": kv.version, "create": kv.create_revision,
                  "mod": kv.mod_revision, "lease": kv.lease}[c.target]
    return _RESULTS[c.result](actual, c.value)


class _Watch:
    """Log history from the start revision, then live batches; a fallen-behind watcher re-reads the log."""

    def __init__(self, kv: SqliteKV, start: bytes, end: bytes, start_revision: int):
        self._kv = kv
        self._start, self._end = start, end
        self._next = start_revision
        self._backlog: collections.deque[Batch] = collections.deque()
        self._sub: _Subscriber | None = None
        self._closed = False

    async def sync(self) -> None:
        """Subscribe first, then read the log: nothing committed in between is missed."""
        self._sub = self._kv._subscribe(self._start, self._end)
        if self._next <= 0:
            self._next = self._kv._revision + 1
            return
        try:
            batches = await self._kv._history(self._start, self._end, self._next)
        except BaseException:
            self._kv._subscribers.discard(self._sub)
            raise
        self._backlog.extend(batches)

    def __aiter__(self) -> "_Watch":
        return self

    async def __anext__(self) -> Batch:
        while True:
            if self._closed or self._kv._closed:
                raise StopAsyncIteration
            if self._backlog:
                batch = self._backlog.popleft()
            elif self._sub.batches:
                batch = self._sub.batches.popleft()
            elif self._sub.overflowed:
                await self.sync()
                continue
            else:
                self._sub.wakeup.clear()
                await self._sub.wakeup.wait()
                continue
            if batch.revision >= self._next:
                self._next = batch.revision + 1
                return batch

    async def request_progress(self) -> None:
        """An empty batch at the last revision published to the watches, behind what they were handed (the
        writer thread's revision may be ahead of that: its batches are on their way to the loop)."""
        if self._sub is not None and not self._sub.overflowed:
            self._sub.batches.append(Batch(self._kv._published, ()))
            self._sub.wakeup.set()

    async def aclose(self) -> None:
        self._closed = True
        if self._sub is not None:
            self._kv._subscribers.discard(self._sub)
            self._sub.wakeup.set()
