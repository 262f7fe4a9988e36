"""Blocking queries: `?index=N&wait=D` parks the request until the catalog moves past N.

The store calls the Watch on every new snapshot; the Watch swaps in a fresh
Event and sets the old one, so every parked request wakes at once, with no
polling. A woken request recomputes its answer and keeps waiting if its
answer did not change (a check flapping elsewhere does not wake a watcher of
`billing` for nothing).
"""
from __future__ import annotations

import asyncio
import random
from contextlib import contextmanager

from ..catalog.snapshot import Snapshot
from ..catalog.validate import FieldError
from ..config import ConfigError, parse_duration

DEFAULT_WAIT = 300.0   # Consul's, when ?wait= is not given (never more than http.max_wait)


class TooManyWaiters(Exception):
    """429: the bounded number of parked requests is reached."""


def index_of(snap: Snapshot) -> int:
    """X-Consul-Index; Consul never returns 0 (clients treat it as 'no index')."""
    return max(1, snap.version)


def parse_blocking(query, *, max_wait: float) -> tuple[int | None, float]:
    raw_index = query.get("index")
    index = None
    if raw_index not in (None, ""):
        if not raw_index.isdigit():
            raise FieldError("index", f"{raw_index!r} is not a non-negative integer")
        index = int(raw_index)
    wait = DEFAULT_WAIT
    raw_wait = query.get("wait")
    if raw_wait not in (None, ""):
        try:
            wait = parse_duration(raw_wait, key="wait")
        except ConfigError as exc:
            raise FieldError("wait", str(exc).split(": ", 1)[-1]) from None
    return index, min(wait, max_wait)


class Watch:
    def __init__(self, *, limit: int, rng: random.Random | None = None):
        self.limit = limit
        self.active = 0
        self.unchanged = 0  # wakes after which a parked request's answer was the same, so it kept waiting
        self.rng = rng or random.Random()
        self._event = asyncio.Event()
        self._closed = False

    def __call__(self, snapshot: Snapshot) -> None:
        """Store listener: wake every parked request."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def jittered(self, wait: float) -> float:
        """Consul adds up to wait/16 so watchers started together do not return together."""
        return wait + self.rng.uniform(0, wait / 16)

    @contextmanager
    def slot(self):
        if self.active >= self.limit:
            raise TooManyWaiters(f"too many blocking queries in flight ({self.limit}); retry later")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    async def changed(self, timeout: float) -> bool:
        """True when a new snapshot arrived within `timeout`; False on timeout or shutdown."""
        if self._closed:
            return False
        try:  # asyncio.timeout, not wait_for: wait_for swallows a cancel (shutdown) that comes as the wait ends
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        return not self._closed

    def close(self) -> None:
        """Release every parked request (shutdown)."""
        self._closed = True
        self._event.set()
