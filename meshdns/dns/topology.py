"""Who asked for which name, counted per minute, for the topology view.

Answering a query costs one dictionary increment: each reply-cache entry
(one name, one client class) holds a tally of its answers by the client's
source address, and the DNS path adds one to it (dns/cache.Entry.draw). The
counter keeps the tallies that counted something this minute and folds them
into (address, name) counts when the minute is sealed or read. Which services
a client is, and which service a name means, is worked out only when the
topology is read (api/topology.py), so the hot path never looks at the
catalog for it.

Counts go into the tallies of the current minute; `roll` seals them when the
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

Counts = dict[str, dict[str, int]]   # address -> name -> queries
Tally = dict[str, int]               # one name's queries by address, this minute
# minute number -> (counts, queries dropped over the cap)
Buckets = Mapping[int, tuple[Counts, int]]


class TopologyCounter:
    def __init__(self, *, clock: Callable[[], float], max_keys: int, keep_minutes: int,
                 peers: Callable[[], Iterable[Buckets]] | None = None):
        self.clock = clock
        self.max_keys = max_keys
        self.keep_minutes = keep_minutes
        self.first_minute = self.minute = int(clock() // 60)
        self.live: list[tuple[str, Tally]] = []  # (name, tally) for the tallies counting this minute
        self.pairs = 0  # distinct (address, name) pairs in the live tallies
        self.dropped = 0
        self.sealed: dict[int, tuple[Counts, int]] = {}
        self.peers = peers  # the worker processes' buckets
        self._exported = self.minute - 1  # the newest sealed minute export() has handed out
        self._tallies: dict[str, Tally] = {}  # count()'s own, by name

    def count(self, address: str, name: str) -> None:
        """One query for `name` from `address`, for callers without a tally of their own."""
        tally = self._tallies.get(name)
        if tally is None:
            tally = self._tallies[name] = {}
        try:
            tally[address] += 1
        except KeyError:
            self.first(tally, address, name)

    def first(self, tally: Tally, address: str, name: str) -> None:
        """The first query this minute from `address` into `tally` (`name`'s): held while there is room,
        else only counted as dropped."""
        if self.pairs >= self.max_keys:
            self.dropped += 1
            return
        if not tally:
            self.live.append((name, tally))
        tally[address] = 1
        self.pairs += 1

    def current(self) -> Counts:
        """The current minute's counts so far."""
        out: Counts = {}
        for name, tally in self.live:
            for address, n in tally.items():
                names = out.setdefault(address, {})
                names[name] = names.get(name, 0) + n
        return out

    def roll(self) -> None:
        """Seal the current minute once the clock is past it; forget minutes beyond the window."""
        minute = int(self.clock() // 60)
        if minute <= self.minute:
            return
        if self.live or self.dropped:
            self.sealed[self.minute] = (self.current(), self.dropped)
        for _, tally in self.live:
            tally.clear()   # the entries holding them count the new minute from nothing
        self.live, self._tallies, self.pairs, self.dropped, self.minute = [], {}, 0, 0, minute
        for old in [m for m in self.sealed if m <= minute - self.keep_minutes]:
            del self.sealed[old]

    async def run(self) -> None:
        """Roll at every minute boundary (the clock must be the event loop's, time.monotonic)."""
        while True:
            await asyncio.sleep(max(0.01, (self.minute + 1) * 60 - self.clock()))
            self.roll()

    def buckets(self) -> dict[int, tuple[Counts, int]]:
        """Every minute this process still holds, the current one included."""
        self.roll()
        return {**self.sealed, self.minute: (self.current(), self.dropped)}

    def export(self) -> dict[int, tuple[Counts, int]]:
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
                    for address, names in part.items():
                        for name, n in names.items():
                            counts[address, name] += n
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
