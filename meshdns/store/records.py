"""The state every replica shares: (kind, key) -> JSON records at `<prefix>v1/<kind>/<key>`.

A reflector mirrors the prefix; consumers (registrations, config entries...)
are views of that mirror. They subscribe to their kinds and apply each
revision's changed records incrementally, whether this replica wrote them or
another did. A write is one transaction (a registration and its checks
together, or nothing); `commit` returns once this replica's reflector has
applied it, so a 200 is followed by reads that show it (read-your-writes).
Create and mod revisions are the keys' own, so they are the same on every
replica. Writes nobody waits for (a check's new status) go through one
ordered background writer in which the latest value of a key wins.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from ..catalog.model import Revision
from ..sources.backoff import Backoff
from .kv import DELETE, KV, MAX_TXN_OPS, Batch, Compare, Delete, InvalidRequest, Op, Put, StoreError, \
    StoreUnavailable
from .reflector import Reflector

log = logging.getLogger("meshdns.store.records")

VERSION_DIR = b"v1/"


@dataclass(frozen=True, slots=True)
class Write:
    """Put `value` (JSON-able) at (kind, key); value None deletes it.

    `if_changed`: a put of the value already stored changes nothing (the key keeps its revisions),
    as re-registering an unchanged service does in Consul. Otherwise every put is a change, as in etcd."""

    kind: str
    key: str
    value: Any = None
    if_changed: bool = False


@dataclass(frozen=True, slots=True)
class Record:
    """One changed record of a batch: its value (None: deleted, or not JSON) and its revisions."""

    kind: str
    key: str
    value: Any
    revision: Revision | None


Fence = tuple[Compare, ...]   # compares a queued write must still hold when it is written
Subscriber = Callable[[list[Record]], None]


def record_key(prefix: bytes, kind: str, key: str) -> bytes:
    return prefix + VERSION_DIR + kind.encode() + b"/" + key.encode()


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


class Records:
    def __init__(self, kv: KV | Callable[[], KV], prefix: bytes, *, backend: str | None = None,
                 timeout: float = 5.0, resync_interval: float = 600.0, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.time):
        """`kv`: the store, or a function that opens it at `start` (then say which `backend` it opens): a
        local file is locked and opened only once the server really starts."""
        self._opener = None if hasattr(kv, "txn") else kv
        self.kv: KV = None if self._opener is not None else kv
        self._backend = backend or self.kv.backend
        self.prefix = prefix
        self.timeout = timeout
        self._dir = prefix + VERSION_DIR
        self.reflector = Reflector(self.kv, prefix, self._apply, resync_interval=resync_interval, backoff=backoff,
                                   clock=clock)
        self._kinds: dict[str, dict[str, tuple[Any, Revision]]] = {}   # kind -> key -> (value, revisions)
        self._subscribers: list[tuple[frozenset[str], Subscriber]] = []
        self._listeners: list[Callable[[Batch], None]] = []
        self._waiters: list[tuple[int, int, asyncio.Future]] = []   # (revision, seq, future), a heap
        self._deletes: list[tuple[tuple[bytes, ...], asyncio.Future]] = []  # waiting for keys to be gone
        self._seq = itertools.count()
        self._soon: dict[bytes, tuple[Write, Fence]] = {}
        self._soon_wakeup = asyncio.Event()
        self._soon_idle = asyncio.Event()
        self._soon_idle.set()
        self._inflight: set[bytes] = set()
        self._inflight_done = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.upgraded_from: int | None = None   # the schema of an earlier store imported at this start

    def __repr__(self) -> str:
        return repr(self.kv) if self.kv is not None else f"{self._backend} (not open)"

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def revision(self) -> int:
        """The last store revision this replica has applied."""
        return self.reflector.revision

    @property
    def ready(self) -> bool:
        return self.reflector.ready.is_set()

    def status(self) -> dict[str, Any]:
        """/readyz's view of the store: which, whether it answers, since when (UTC, RFC 3339)."""
        since = datetime.fromtimestamp(self.reflector.since, timezone.utc).isoformat(timespec="seconds")
        out = {"backend": self.backend, "connected": self.reflector.connected,
               "since": since.replace("+00:00", "Z"), "revision": self.revision}
        if self.reflector.error and not self.reflector.connected:
            out["error"] = self.reflector.error
        return out

    # -- reading the mirror -------------------------------------------------------

    def subscribe(self, kinds: Iterable[str], callback: Subscriber) -> None:
        """Call `callback` with each revision's changed records of `kinds` (the first list included)."""
        self._subscribers.append((frozenset(kinds), callback))

    def on_batch(self, listener: Callable[[Batch], None]) -> None:
        """Every batch of the whole prefix, before the subscribers (membership, election)."""
        self._listeners.append(listener)

    def load(self, kind: str) -> dict[str, Any]:
        """Every record of one kind, as applied here."""
        return {key: value for key, (value, _) in list(self._kinds.get(kind, {}).items())}

    def value_of(self, kind: str, key: str) -> Any:
        found = self._kinds.get(kind, {}).get(key)
        return found[0] if found is not None else None

    def revision_of(self, kind: str, key: str) -> Revision | None:
        """The key's create and mod revision (None: no such key), as applied here."""
        found = self._kinds.get(kind, {}).get(key)
        return found[1] if found is not None else None

    def _parse(self, key: bytes) -> tuple[str, str] | None:
        if not key.startswith(self._dir):
            return None
        kind, sep, rest = key[len(self._dir):].decode(errors="replace").partition("/")
        return (kind, rest) if sep else None

    def _apply(self, batch: Batch) -> None:
        for listener in self._listeners:
            listener(batch)
        changed: list[Record] = []
        for event in batch.events:
            name = self._parse(event.kv.key)
            if name is None:
                continue
            value = revision = None
            if event.type != DELETE:
                try:
                    value = json.loads(event.kv.value)
                except ValueError:
                    log.error("%s: record %s/%s is not valid JSON; ignored", self.kv, *name)
                else:
                    revision = Revision(event.kv.create_revision, event.kv.mod_revision)
            if revision is None:
                self._kinds.get(name[0], {}).pop(name[1], None)
            else:
                self._kinds.setdefault(name[0], {})[name[1]] = (value, revision)
            changed.append(Record(name[0], name[1], value, revision))
        first = not self.reflector.ready.is_set()   # every view hears of the first read, even an empty one
        if changed or first:
            for kinds, callback in self._subscribers:
                mine = [r for r in changed if r.kind in kinds]
                if mine or first:
                    try:
                        callback(mine)
                    except Exception:  # one broken view must not stop the others or the mirror
                        log.exception("applying records at revision %d failed", batch.revision)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.revision:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                future.set_result(None)
        mirror = self.reflector.mirror
        still = []
        for keys, future in self._deletes:
            if any(k in mirror for k in keys):
                still.append((keys, future))
            elif not future.done():
                future.set_result(None)
        self._deletes = still

    async def wait_applied(self, revision: int, timeout: float | None = None) -> bool:
        """True once this replica has applied `revision`; False after `timeout` seconds."""
        if self.revision >= revision:
            return True
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, next(self._seq), future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def current_revision(self) -> int:
        """The store's revision now (one quorum read), whatever this replica has applied."""
        return (await self.kv.list(self.prefix + b"\0"))[1]

    async def catch_up(self, revision: int | None = None, timeout: float | None = None) -> bool:
        """Wait until this replica has applied the store as it is now (or up to `revision`, if lower): a
        write any replica acknowledged before this call is then visible here. False after `timeout`."""
        timeout = self.timeout if timeout is None else timeout
        now = await asyncio.wait_for(self.current_revision(), timeout)
        target = now if revision is None else min(revision, now)
        loop = asyncio.get_running_loop()
        deadline, step = loop.time() + timeout, 0.02
        while self.revision < target:   # the watch's member may apply the last revision an instant later
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self.reflector.request_progress()   # the revision moves on even if nothing here changed
            await self.wait_applied(target, min(step, remaining))
            step = min(step * 2, 0.5)
        return True

    # -- lifecycle ------------------------------------------------------------------

    def open(self) -> KV:
        """The store, opened now if it was not yet."""
        if self.kv is None:
            self.kv = self.reflector.kv = self._opener()
        return self.kv

    async def start(self) -> None:
        """Mirror the prefix (a task of its own) and return after the first full read."""
        self.open()
        self._tasks = [asyncio.create_task(self.reflector.run(), name="meshdns-store-reflector"),
                       asyncio.create_task(self._soon_writer(), name="meshdns-store-writer")]
        ready = asyncio.ensure_future(self.reflector.ready.wait())
        await asyncio.wait([ready, self._tasks[0]], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            self._tasks[0].result()  # the reflector stopped: its error
        log.info("%s: read %d records at revision %d", self.kv, sum(map(len, self._kinds.values())), self.revision)

    async def close(self, *, flush_timeout: float = 2.0) -> None:
        if self._soon and self.kv is not None:
            try:
                await asyncio.wait_for(self.flush(), flush_timeout)
            except asyncio.TimeoutError:
                log.warning("%s: %d pending write(s) not flushed at shutdown", self.kv, len(self._soon))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, _, future in self._waiters:
            future.cancel()
        if self.kv is not None:
            await self.kv.close()

    # -- writes ---------------------------------------------------------------------

    def _ops(self, writes: Iterable[Write]) -> list[Op]:
        """The operations that change something, judged against the mirror."""
        mirror = self.reflector.mirror
        ops: list[Op] = []
        for w in writes:
            key = record_key(self.prefix, w.kind, w.key)
            if w.value is None:
                if key in mirror:
                    ops.append(Delete(key))
                continue
            value = encode(w.value)
            current = mirror.get(key)
            if w.if_changed and current is not None and current.value == value:
                continue
            ops.append(Put(key, value))
        return ops

    async def commit(self, writes: Iterable[Write]) -> int:
        """Write in one transaction and wait until this replica has applied it; the revision applied.

        Raises StoreUnavailable (nothing known to be written, or written but not seen here in time) or
        InvalidRequest (more than the store takes in one transaction)."""
        writes = list(writes)
        ops = self._ops(writes)  # a value that is not JSON fails here, before anything is written
        if not ops:
            return self.revision
        keys = {op.key for op in ops}
        for key in keys:
            self._soon.pop(key, None)   # this write supersedes a queued one
        while self._inflight & keys:     # ... and lands after one already on its way
            self._inflight_done.clear()
            await self._inflight_done.wait()
        ops = self._ops(writes)
        if not ops:
            return self.revision
        if len(ops) > MAX_TXN_OPS and all(isinstance(op, Delete) for op in ops):
            for i in range(0, len(ops), MAX_TXN_OPS):  # removals only: in order, so children go first
                await self._transact(ops[i:i + MAX_TXN_OPS])
            return self.revision
        if len(ops) > MAX_TXN_OPS:
            raise InvalidRequest(f"one write may change at most {MAX_TXN_OPS} records, not {len(ops)}")
        return await self._transact(ops)

    async def _transact(self, ops: list[Op]) -> int:
        _, revision = await self.kv.txn((), ops)
        if any(isinstance(op, Put) for op in ops):
            seen = await self.wait_applied(revision, self.timeout)
        else:  # deletes that find nothing make no revision: wait for the keys to be gone instead
            future = asyncio.get_running_loop().create_future()
            self._deletes.append((tuple(op.key for op in ops), future))
            self._wake_waiters()
            try:
                await asyncio.wait_for(asyncio.shield(future), self.timeout)
                seen = True
            except asyncio.TimeoutError:
                seen = False
        if not seen:
            raise StoreUnavailable(f"{self.kv}: written at revision {revision}, but this replica has not seen it "
                                   f"within {self.timeout:g}s (its watch is behind); retrying is safe")
        return self.revision

    def commit_soon(self, writes: Iterable[Write], *, fence: Sequence[Compare] = ()) -> None:
        """Queue writes nobody waits for; per key the latest wins. `fence`: compares that must still hold
        when they are written (else they are dropped: e.g. the membership that made them has ended)."""
        for w in writes:
            self._soon[record_key(self.prefix, w.kind, w.key)] = (w, tuple(fence))
        if self._soon:
            self._soon_idle.clear()
            self._soon_wakeup.set()

    def cancel_soon(self, kind: str, key: str) -> None:
        """Drop a queued write (what it would write is no longer ours to say)."""
        self._soon.pop(record_key(self.prefix, kind, key), None)

    async def flush(self) -> None:
        """Wait until every queued write is written (or dropped)."""
        while self._soon or self._inflight:
            self._soon_wakeup.set()
            await self._soon_idle.wait()

    async def _soon_writer(self) -> None:
        backoff = Backoff(initial=0.1, cap=5.0)
        while True:
            if not self._soon:
                self._soon_idle.set()
                self._soon_wakeup.clear()
                await self._soon_wakeup.wait()
                continue
            pending, self._soon = self._soon, {}
            groups: dict[Fence, list[tuple[bytes, Write]]] = {}
            for key, (write, fence) in pending.items():
                groups.setdefault(fence, []).append((key, write))
            failed = False
            for fence, items in groups.items():
                try:
                    ops = self._ops(write for _, write in items)
                    later = {op.key for op in ops[MAX_TXN_OPS:]}   # the rest in the next transaction
                    self._requeue([item for item in items if item[0] in later], fence)
                    await self._send(ops[:MAX_TXN_OPS], fence)
                except (StoreError, ValueError) as exc:
                    if isinstance(exc, (InvalidRequest, ValueError)):
                        log.error("%s: dropped %d queued write(s): %s", self.kv, len(items), exc)
                    else:
                        if not failed:
                            log.warning("%s: queued writes wait for the store: %s", self.kv, exc)
                        failed = True
                        self._requeue(items, fence)
            if failed:
                await asyncio.sleep(backoff.next())
            else:
                backoff.reset()

    def _requeue(self, items: list[tuple[bytes, Write]], fence: Fence) -> None:
        for key, write in items:
            self._soon.setdefault(key, (write, fence))  # unless a newer value was queued meanwhile

    async def _send(self, ops: list[Op], compares: Sequence[Compare]) -> None:
        if not ops:
            return
        keys = {op.key for op in ops}
        self._inflight |= keys
        try:
            held, revision = await self.kv.txn(compares, ops)
        finally:
            self._inflight -= keys
            self._inflight_done.set()
        if not held:
            log.info("%s: %d queued write(s) dropped: this replica no longer holds what they were fenced on",
                     self.kv, len(ops))
