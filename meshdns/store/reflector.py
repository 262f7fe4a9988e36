"""A mirror of one prefix kept by list + watch, handed to a consumer batch by batch.

The reflector lists the prefix at revision R, then watches from R+1 and hands
each revision's batch to the consumer in order. A revision at or below the
last applied one is never handed over again; a lost connection resumes the
watch at the last applied revision + 1, after a backoff; a compacted history
means a relist, delivered as the difference from the mirror (deletes for keys
that vanished). Every `resync_interval` the same relist runs as a safety net
(etcd#18089: a DELETE dropped at compaction by etcd before 3.4.33/3.5.15):
its difference is empty unless the watch lost something, and is counted in
`repairs`.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Awaitable, Callable

from ..sources.backoff import Backoff
from .kv import DELETE, KV, PUT, Batch, Compacted, Event, KeyValue, StoreError, Watch

log = logging.getLogger("meshdns.store.reflector")

Consumer = Callable[[Batch], Awaitable[None] | None]


class Reflector:
    def __init__(self, kv: KV, prefix: bytes, consumer: Consumer, *, resync_interval: float = 600.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.time):
        self.kv = kv
        self.prefix = prefix
        self._consumer = consumer
        self._resync_interval = resync_interval
        self._sleep = sleep
        self._backoff = backoff or Backoff(initial=0.1, cap=5.0)
        self._clock = clock
        self.mirror: dict[bytes, KeyValue] = {}
        self.revision = 0          # the last revision handed to the consumer
        self.ready = asyncio.Event()  # set once the first list is applied
        self.connected = False
        self.since = clock()        # when `connected` last changed
        self.error: str | None = None
        self.relists = 0
        self.repairs = 0            # changes only a safety-net relist found
        self.reconnects = 0
        self._must_list = True
        self._resync_due = asyncio.Event()
        self._watch: Watch | None = None

    async def request_progress(self) -> None:
        """Ask the watch for an (empty) batch at the store's revision now: `revision` catches up with it
        even when nothing under the prefix changed. Nothing happens while the watch is down."""
        watch = self._watch
        if watch is not None:
            try:
                await watch.request_progress()
            except StoreError as exc:
                log.info("%s: progress request failed: %s", self.kv, exc)

    def resync(self) -> None:
        """Compare the mirror with a fresh list now (the periodic safety net calls this)."""
        self._resync_due.set()

    async def run(self) -> None:
        """Mirror the prefix until cancelled."""
        timer = asyncio.create_task(self._periodic())
        try:
            while True:
                try:
                    if self._must_list:
                        await self._relist()
                    watch = await self.kv.watch(self.prefix, self.revision + 1)
                    self._set_connected(True)
                    self._backoff.reset()
                    self._watch = watch
                    try:
                        await self._follow(watch)
                    finally:
                        self._watch = None
                        await watch.aclose()
                except Compacted as exc:
                    log.info("%s: history compacted at %s; listing %r again", self.kv, exc.revision, self.prefix)
                    self._must_list = True
                except StoreError as exc:
                    self._set_connected(False, str(exc))
                    self.reconnects += 1
                    await asyncio.sleep(self._backoff.next())
        finally:
            timer.cancel()

    async def _periodic(self) -> None:
        while True:
            await self._sleep(self._resync_interval)
            self.resync()

    def _set_connected(self, connected: bool, error: str | None = None) -> None:
        if connected != self.connected:
            self.connected, self.since = connected, self._clock()
            if connected:
                log.info("%s: watching %r from revision %d", self.kv, self.prefix, self.revision + 1)
            else:
                log.warning("%s: store unreachable: %s", self.kv, error)
        self.error = error

    async def _relist(self) -> None:
        resync = self._resync_due.is_set()
        self._resync_due.clear()
        entries, revision = await self.kv.list(self.prefix)
        self._set_connected(True)
        fresh = {kv.key: kv for kv in entries}
        events = [Event(DELETE, KeyValue(key, b"", 0, revision, 0)) for key in sorted(self.mirror) if key not in fresh]
        events += [Event(PUT, kv) for kv in entries if self.mirror.get(kv.key) != kv]
        first = not self.ready.is_set()
        if resync and events and not first:
            self.repairs += len(events)
            log.warning("%s: the watch of %r missed %d change(s) before revision %d; repaired",
                        self.kv, self.prefix, len(events), revision)
        self.relists += 1
        self._must_list = False
        self.mirror = fresh
        self.revision = max(self.revision, revision)
        if first or events:  # a quiet relist moves nothing the consumer serves
            await self._deliver(Batch(self.revision, tuple(events)))
        self.ready.set()

    async def _follow(self, watch: Watch) -> None:
        """Apply batches until the watch fails or a resync is due."""
        due = asyncio.ensure_future(self._resync_due.wait())
        step = None
        try:
            while True:
                step = asyncio.ensure_future(watch.__anext__())
                await asyncio.wait({step, due}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    self._must_list = True
                    return
                try:
                    batch = step.result()
                except StopAsyncIteration:
                    raise StoreError("watch ended") from None
                await self._apply(batch)
                if due.done():
                    self._must_list = True
                    return
        finally:
            due.cancel()
            if step is not None:
                step.cancel()
                step.add_done_callback(_retrieve)

    async def _apply(self, batch: Batch) -> None:
        if batch.revision <= self.revision:
            return  # already applied (the watch never sends it again; this guards the promise)
        for event in batch.events:
            if event.type == PUT:
                self.mirror[event.kv.key] = event.kv
            else:
                self.mirror.pop(event.kv.key, None)
        self.revision = batch.revision
        await self._deliver(batch)

    async def _deliver(self, batch: Batch) -> None:
        result = self._consumer(batch)
        if inspect.isawaitable(result):
            await result


def _retrieve(task: asyncio.Future) -> None:
    """Mark an abandoned read's outcome as seen (the watch is closed right after)."""
    if not task.cancelled():
        task.exception()
