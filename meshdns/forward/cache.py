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
from typing import Callable, Hashable

from cachetools import TLRUCache

from ..dns.wire import Query
from .message import Reply, render

STALE_TTL = 30  # RFC 8767 §4: the TTL of records in a stale answer


@dataclass(frozen=True, slots=True)
class Cached:
    """One upstream reply as the cache holds it. It alone decides the TTLs a client sees at any moment."""

    reply: Reply
    stored: float                # clock() when received
    fresh_for: float             # seconds it stays fresh (0: not cached)
    ttls: tuple[int, ...]        # the TTLs served when new (clamped to [min_ttl, max_ttl])

    @property
    def expires(self) -> float:
        return self.stored + self.fresh_for

    def ttls_at(self, now: float | None) -> tuple[int, ...]:
        """The TTLs to serve at `now`, decremented by whole seconds of age; now None: stale (RFC 8767)."""
        if now is None:
            return (STALE_TTL,) * len(self.ttls)
        age = int(now - self.stored)
        return tuple(t - age for t in self.ttls) if age else self.ttls

    def render(self, query: Query, now: float | None, *, our_payload: int, limit: int) -> bytes:
        return render(self.reply, query, self.ttls_at(now), our_payload=our_payload, limit=limit)


class ReplyCache:
    def __init__(self, *, max_entries: int, min_ttl: float = 0.0, max_ttl: float = 3600.0,
                 serve_stale: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.serve_stale = serve_stale
        self.clock = clock
        self._data: TLRUCache = TLRUCache(maxsize=max(1, max_entries), ttu=self._expires, timer=clock)

    def _expires(self, _key, entry: Cached, _now: float) -> float:
        return entry.expires + self.serve_stale

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

    def entry(self, reply: Reply) -> Cached:
        """A reply just received, as it is served (TTLs clamped) and cached."""
        ttl = self.ttl_for(reply)
        return Cached(reply, self.clock(), ttl or 0.0, tuple(int(self._clamp(t)) for t in reply.ttls))

    def put(self, key: Hashable, reply: Reply) -> Cached | None:
        """Cache a reply just received; the entry, or None when it must not be cached."""
        entry = self.entry(reply)
        if not entry.fresh_for or self.max_entries <= 0:
            return None
        self._data[key] = entry
        return entry

    def get(self, key: Hashable) -> Cached | None:
        """The entry while it is fresh (and it becomes the most recently used)."""
        entry = self._data.get(key)
        return entry if entry is not None and self.clock() < entry.expires else None

    def get_stale(self, key: Hashable) -> Cached | None:
        """An expired entry still within serve_stale (for when every upstream failed)."""
        entry = self._data.get(key)
        return entry if entry is not None and self.clock() >= entry.expires else None
