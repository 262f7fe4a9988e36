"""A bounded cache of upstream replies with TTLs, negative caching and serve-stale.

Pure apart from an injected clock, so its rules are tested without sleeping:
- positive answers live for their smallest TTL, clamped to [min_ttl, max_ttl];
- NXDOMAIN / NODATA live for min(SOA TTL, SOA MINIMUM) of the SOA in authority
  (RFC 2308 §5), clamped the same way; a negative answer without an SOA, a
  truncated reply, or any other rcode is not cached;
- an expired entry is kept `serve_stale` seconds longer, to be served (TTL 30,
  RFC 8767 §4) only when every upstream failed;
- at most `max_entries` entries (0 disables the cache); the least recently used
  entry goes first.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Hashable

from cachetools import TLRUCache

from .message import Reply

STALE_TTL = 30  # RFC 8767 §4: the TTL of records in a stale answer


@dataclass(frozen=True, slots=True)
class Entry:
    reply: Reply
    stored: float     # clock() when cached
    ttl: float        # seconds it stays fresh


@dataclass(frozen=True, slots=True)
class Hit:
    reply: Reply
    ttl: Callable[[int], int]   # maps a TTL as received to the TTL to serve now
    stale: bool = False


@dataclass(frozen=True, slots=True)
class Countdown:
    """How a fresh entry's served TTLs count down: field i reads max(0, bases[i] - whole age) until `expires`."""

    stored: float
    expires: float
    offsets: tuple[int, ...]   # the TTL fields' byte offsets (as in the reply; render keeps them)
    bases: tuple[int, ...]
    touch: Callable[[], object]  # marks the entry used, for whoever serves copies of it (least recently used goes)


class ReplyCache:
    def __init__(self, *, max_entries: int, min_ttl: float = 0.0, max_ttl: float = 3600.0,
                 serve_stale: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.serve_stale = serve_stale
        self.clock = clock
        self._data: TLRUCache = TLRUCache(maxsize=max(1, max_entries), ttu=self._expires, timer=clock)

    def _expires(self, _key, entry: Entry, _now: float) -> float:
        return entry.stored + entry.ttl + self.serve_stale

    def __len__(self) -> int:
        self._data.expire()
        return len(self._data)

    def ttl_for(self, reply: Reply) -> float | None:
        """How long this reply may be cached, or None when it must not be."""
        if reply.tc:
            return None
        if reply.negative:
            raw = reply.negative_ttl
        elif reply.rcode == 0:
            raw = reply.min_ttl
        else:
            return None
        if raw is None:
            return None
        ttl = self._clamp(raw)
        return ttl if ttl > 0 else None

    def _clamp(self, ttl: float) -> float:
        return min(max(ttl, self.min_ttl), self.max_ttl)

    def put(self, key: Hashable, reply: Reply) -> bool:
        ttl = self.ttl_for(reply)
        if ttl is None or self.max_entries <= 0:
            return False
        self._data[key] = Entry(reply, self.clock(), ttl)
        return True

    def _fresh(self, key: Hashable) -> tuple[Entry, float] | None:
        """(entry, age) while the entry is fresh."""
        entry = self._data.get(key)
        if entry is None:
            return None
        age = self.clock() - entry.stored
        return (entry, age) if age < entry.ttl else None

    def get(self, key: Hashable) -> Hit | None:
        """A fresh entry, with TTLs to serve decremented by its age."""
        found = self._fresh(key)
        if found is None:
            return None
        entry, age = found
        whole = int(age)
        clamp = self._clamp
        return Hit(entry.reply, lambda ttl: int(clamp(ttl)) - whole)

    def fresh_until(self, key: Hashable) -> float | None:
        """When the served form of a fresh entry next changes: its next whole second of age, or expiry."""
        found = self._fresh(key)
        if found is None:
            return None
        entry, age = found
        return entry.stored + min(int(age) + 1, entry.ttl)

    def countdown(self, key: Hashable) -> Countdown | None:
        found = self._fresh(key)
        if found is None:
            return None
        entry, _ = found
        clamp = self._clamp
        return Countdown(entry.stored, entry.stored + entry.ttl, entry.reply.ttl_offsets,
                         tuple(int(clamp(t)) for t in entry.reply.ttls), partial(self._data.get, key))

    def get_stale(self, key: Hashable) -> Hit | None:
        """An expired entry still within serve_stale (for when every upstream failed)."""
        entry = self._data.get(key)
        if entry is None or self.clock() - entry.stored < entry.ttl:
            return None
        return Hit(entry.reply, lambda _ttl: STALE_TTL, stale=True)

    def fresh_reply(self, reply: Reply) -> Hit:
        """A reply just received, served with its TTLs clamped (never above max_ttl)."""
        clamp = self._clamp
        return Hit(reply, lambda ttl: int(clamp(ttl)))
