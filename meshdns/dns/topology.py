"""Who asked for which name, counted per minute, for the topology view.

Answering a query costs one dictionary increment: the key is the client's
source address and the question name the answer was built for, both objects
the DNS path already holds. Which services a client is, and which service a
name means, is worked out only when the topology is read
(api/topology.py), so the hot path never looks at the catalog for it.

Counts go into the bucket of the current minute; `roll` seals it when the
minute is over (the primary's `run` wakes at each minute boundary, workers
roll before they send their buckets) and forgets minutes older than the
longest window. A bucket holds at most `max_keys` distinct (address, name)
pairs; queries for further pairs in that minute are only counted as dropped,
so memory stays bounded however many clients there are.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Callable, Iterable, Mapping

# minute number -> (counts by (address, name), queries dropped over the cap)
Buckets = Mapping[int, tuple[dict[tuple[str, str], int], int]]


class TopologyCounter:
    def __init__(self, *, clock: Callable[[], float], max_keys: int, keep_minutes: int,
                 peers: Callable[[], Iterable[Buckets]] | None = None):
        self.clock = clock
        self.max_keys = max_keys
        self.keep_minutes = keep_minutes
        self.first_minute = self.minute = int(clock() // 60)
        self.current: dict[tuple[str, str], int] = {}
        self.dropped = 0
        self.sealed: dict[int, tuple[dict[tuple[str, str], int], int]] = {}
        self.peers = peers  # the worker processes' buckets
        self._exported = self.minute - 1  # the newest sealed minute export() has handed out

    def count(self, address: str, name: str) -> None:
        key = (address, name)
        counts = self.current
        try:
            counts[key] += 1
        except KeyError:
            if len(counts) < self.max_keys:
                counts[key] = 1
            else:
                self.dropped += 1

    def roll(self) -> None:
        """Seal the current minute once the clock is past it; forget minutes beyond the window."""
        minute = int(self.clock() // 60)
        if minute <= self.minute:
            return
        if self.current or self.dropped:
            self.sealed[self.minute] = (self.current, self.dropped)
        self.current, self.dropped, self.minute = {}, 0, minute
        for old in [m for m in self.sealed if m <= minute - self.keep_minutes]:
            del self.sealed[old]

    async def run(self) -> None:
        """Roll at every minute boundary (the clock must be the event loop's, time.monotonic)."""
        while True:
            await asyncio.sleep(max(0.01, (self.minute + 1) * 60 - self.clock()))
            self.roll()

    def buckets(self) -> dict[int, tuple[dict[tuple[str, str], int], int]]:
        """Every minute this process still holds, the current one included."""
        self.roll()
        return {**self.sealed, self.minute: (self.current, self.dropped)}

    def export(self) -> dict[int, tuple[dict[tuple[str, str], int], int]]:
        """For a worker's report: the minutes sealed since the last report, and the current one."""
        out = {m: b for m, b in self.buckets().items() if m > self._exported}
        self._exported = self.minute - 1
        return out

    def window(self, minutes: int) -> tuple[Counter, int, int]:
        """(counts by (address, name), dropped, minutes covered) over the last `minutes` minutes,
        the current one included, from this process and its workers.

        Minutes covered: those of the window since the counter started (the current one counts
        as one), the denominator of a rate per minute."""
        self.roll()
        since = self.minute - minutes
        counts: Counter = Counter()
        dropped = 0
        for buckets in (self.buckets(), *(self.peers() if self.peers is not None else ())):
            for minute, (part, lost) in buckets.items():
                if since < minute <= self.minute:
                    counts.update(part)
                    dropped += lost
        return counts, dropped, min(minutes, self.minute - self.first_minute + 1)


def merged(old: Buckets, new: Buckets, *, keep_minutes: int) -> dict:
    """A worker's buckets as the primary keeps them: `new` replaces `old` minute by minute,
    minutes beyond the window go. A new dict, so readers on another thread never see it change."""
    out = {**old, **new}
    if out:
        newest = max(out)
        out = {m: b for m, b in out.items() if m > newest - keep_minutes}
    return out
