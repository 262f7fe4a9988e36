"""Whole UDP replies kept per exact query packet, for the questions a server hears over and over.

Stub resolvers ask the same names with the same packet; only the ID changes.
When a compiled answer's only per-query choices are the split pick and a
uniform shuffle of at most four records, every reply it can give is rendered
once. A repeat query is then one dict lookup on the packet after its ID, the
same RNG calls the fast path makes to choose, and the ID put back in front:
byte-identical to the fast path (tests compare them), at a fraction of the work.

Everything the reply depends on is in the key or checked: the packet after the
ID (flags, question as asked, EDNS size and DO bit), whether recursion is
offered to this client (two tables) and UDP (TCP is never replayed). Like a
compiled answer, a replay outlives catalog changes that do not touch the
snapshot objects it was built from; one that carries the SOA (whose serial is
the catalog version) lives for one version. A cached forwarded reply is kept
the same way until its cache entry expires; its TTL fields are rewritten as
whole seconds of age pass, as the forwarder would render them.
Each table is bounded by a byte budget, least recently used first out, so
a flood of one-off names cannot push out the replies asked for all the time.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Callable

from cachetools import LRUCache

from ..catalog.snapshot import Snapshot
from .resolver import still_valid
from .weighting import uniform_orders, weighted_pick

_TTL = struct.Struct("!I")
MAX_ORDERS = 24        # shuffles rendered per group: up to four equal-weight records
BUDGET = 16 << 20      # bytes of rendered replies kept per table (with RA, without, forwarded)
SEEN = 65536           # packets remembered as asked once


@dataclass(slots=True)
class Replay:
    version: int
    groups: tuple[tuple[bytes, ...], ...]  # per split group: reply after the ID, one per shuffle order
    group_weights: list
    targets: tuple[str, ...]               # per group: the split target it serves ("" when none)
    count_key: tuple                       # (qtype, rcode, name kind) for the queries counter
    split: str
    size: int
    deps: tuple | None                     # the plan's deps; None when valid for this version only
    qname: str = ""                        # lower-case, as the compiled answer has it (topology counts)


@dataclass(slots=True)
class Forwarded:
    """A cached upstream reply for one exact packet, its TTL fields rewritten as whole seconds pass."""

    version: int
    deps: tuple         # what made the name not ours (the forward plan's deps)
    body: bytes         # the reply after its ID
    count_key: tuple
    stored: float       # clock() when the upstream reply was cached
    expires: float      # clock() when it stops being fresh: then the forwarder decides again
    offsets: tuple[int, ...]  # TTL fields in `body`
    bases: tuple[int, ...]    # their values at age 0
    touch: Callable[[], object] | None = None  # marks the forwarder's cache entry used (once a second)
    age: int = -1       # the whole seconds of age `body` shows (-1: not yet written)


def orders_for(weights: list) -> list[list[int]] | None:
    """Every order `weighted_order` can return for these weights, in its index order; None if too many."""
    if len(weights) <= 1:
        return [list(range(len(weights)))]
    orders = uniform_orders(weights)
    # weighted shuffles draw one number per record: not enumerable
    return orders if orders is not None and len(orders) <= MAX_ORDERS else None


class ReplayTable:
    def __init__(self, *, budget: int = BUDGET):
        self.budget = budget
        self.tables: tuple[LRUCache, LRUCache] = (_table(budget), _table(budget))  # without / with RA
        self.forward: LRUCache = _table(budget)  # forwarded names, for clients offered recursion
        self._seen: LRUCache = LRUCache(SEEN)  # keys asked once at this version: rendered when asked again

    @property
    def size(self) -> int:
        """Bytes of replies kept, all tables."""
        return sum(t.currsize for t in (*self.tables, self.forward))

    def reply(self, data: bytes, ra: bool, snap: Snapshot, rng: random.Random) -> tuple[bytes, Replay, str] | None:
        r = self.tables[ra].get(data[2:])
        if r is None:
            return None
        if r.version != snap.version:
            if r.deps is None or not still_valid(r.deps, snap):
                return None
            r.version = snap.version
        groups = r.groups
        gi = 0 if len(groups) == 1 else weighted_pick(r.group_weights, rng)
        tails = groups[gi]
        tail = tails[0] if len(tails) == 1 else tails[int(rng.random() * len(tails))]
        return data[:2] + tail, r, r.targets[gi]

    def forwarded(self, data: bytes, snap: Snapshot, now: float) -> tuple[bytes, tuple] | None:
        """A cached upstream reply for a client offered recursion, its TTLs as old as the cache entry."""
        f = self.forward.get(data[2:])
        if f is None:
            return None
        if f.version != snap.version:
            if not still_valid(f.deps, snap):
                return None
            f.version = snap.version
        if now >= f.expires:
            del self.forward[data[2:]]   # expired: the forwarder refreshes it (or serves it stale)
            return None
        age = int(now - f.stored)
        if age != f.age:
            if f.touch is not None:
                f.touch()
            body = bytearray(f.body)
            for offset, base in zip(f.offsets, f.bases):
                _TTL.pack_into(body, offset, base - age if base > age else 0)
            f.body, f.age = bytes(body), age
        return data[:2] + f.body, f.count_key

    def wanted(self, data: bytes, ra: bool, version: int) -> bool:
        """True on the second sight of this exact packet at this version (one-off names are not rendered)."""
        key = data[2:] + (b"\x01" if ra else b"\x00")
        if self._seen.get(key) == version:
            del self._seen[key]
            return True
        self._seen[key] = version
        return False

    def keep(self, data: bytes, ra: bool, replay: Replay) -> None:
        if replay.size <= self.budget:
            self.tables[ra][data[2:]] = replay

    def keep_forwarded(self, data: bytes, forwarded: Forwarded) -> None:
        if len(forwarded.body) <= self.budget:
            self.forward[data[2:]] = forwarded


def _table(budget: int) -> LRUCache:
    return LRUCache(budget, getsizeof=_bytes_of)


def _bytes_of(entry: Replay | Forwarded) -> int:
    return entry.size if isinstance(entry, Replay) else len(entry.body)
