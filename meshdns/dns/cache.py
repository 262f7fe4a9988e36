"""The reply cache: rendered replies per exact query, and the compiled answers beneath them.

Two tables, both bounded, least recently used first out (a flood of one-off
names cannot push out the names asked all the time):
- `Answers`: the compiled plan per (lower-case name, qtype, client class), valid
  while what the resolver read (catalog.view) is unchanged;
- per client class and transport, a `Table` of entries keyed by the query packet
  after its ID (flags, the question as asked, EDNS size and DO: everything a
  reply depends on besides the client class). An entry keeps the replies it has
  rendered, one per choice `weighting.choose` can make, so a repeated query is a
  dict lookup, one draw and the ID put in front. A forwarded entry renders its
  upstream reply anew as whole seconds of age pass.
"""
from __future__ import annotations

import logging
import random
from collections import Counter, OrderedDict
from typing import Callable

from ..catalog.snapshot import Snapshot
from ..catalog.view import still_valid
from ..forward.cache import Cached
from .answer import Compiled, compile_plan, render
from .weighting import Order, choose
from .resolver import ResolverOptions, plan, soa_record
from .rdata import record
from .wire import Query

log = logging.getLogger("meshdns.dns")

ENTRY_OVERHEAD = 200   # bytes an entry costs besides its replies, for the budget


class Table(OrderedDict):
    """A dict bounded by the total `size` of its values, least recently used first out.

    A reader that uses a value calls touch(): the value moves to the end only once it has drifted into
    the older half (more puts since it last moved than half the table), so a popular value moves once
    in a while instead of on every read. Values carry `size` and `stamp` (the put count when last moved).
    """

    def __init__(self, budget: int):
        super().__init__()
        self.budget = budget
        self.size = 0
        self.puts = 0
        self.half = 0

    def put(self, key, value) -> None:
        old = self.pop(key, None)
        if old is not None:
            self.size -= old.size
        if value.size > self.budget:
            return
        self.puts += 1
        value.stamp = self.puts
        self[key] = value
        self.size += value.size
        while self.size > self.budget:
            self.size -= self.popitem(last=False)[1].size
        self.half = len(self) >> 1

    def touch(self, key, value) -> None:
        if self.puts - value.stamp > self.half:
            self.move_to_end(key)
            value.stamp = self.puts


class Answers:
    """Compiled plans, and our SOA record per domain for the current version."""

    def __init__(self, opts: ResolverOptions, *, max_entries: int):
        self.opts = opts
        self.table = Table(max_entries)
        self._soa: dict[str, bytes] = {}
        self._soa_version = -1

    def get(self, query: Query, client, snap: Snapshot) -> Compiled:
        key = (query.qname_lower, query.qtype, client)
        c = self.table.get(key)
        if c is not None and valid(c, snap):
            self.table.touch(key, c)
            return c
        c = compile_plan(plan(query.qname_lower, query.qtype, snap, self.opts, client=client), query.qtype,
                         snap.version)
        self.table.put(key, c)
        return c

    def soa(self, domain: str, snap: Snapshot) -> bytes:
        if self._soa_version != snap.version:
            self._soa, self._soa_version = {}, snap.version
        raw = self._soa.get(domain)
        if raw is None:
            r = soa_record(domain, snap, self.opts)
            raw = self._soa[domain] = record(r.name, r.rtype, r.ttl, r.rdata)
        return raw


def valid(c: Compiled, snap: Snapshot) -> bool:
    """True while the compiled plan still reads the same from `snap` (noting the version it was checked at)."""
    if c.version != snap.version:
        if not still_valid(c.plan.deps, snap):
            return False
        c.version = snap.version
    return True


class Counts:
    """Where an entry counts the queries it answers: DnsStats' counters, the forwarder's cache results, and
    who asked for which name (the topology counter, when there is one)."""

    __slots__ = ("queries", "splits", "forward", "topology", "locality", "denied")

    def __init__(self, queries, splits, forward, topology=None, *, locality=None, denied=None):
        self.queries, self.splits, self.forward, self.topology = queries, splits, forward, topology
        self.locality = Counter() if locality is None else locality
        self.denied = Counter() if denied is None else denied


class Entry:
    """The replies to one exact query from one client class."""

    __slots__ = ("compiled", "query", "answers", "counts", "ra", "limit", "our_payload", "set_tc", "version",
                 "replies", "fixed", "size", "stamp", "tally")

    def __init__(self, compiled: Compiled, query: Query, answers: Answers, counts: Counts, *, ra: bool, limit: int,
                 our_payload: int, set_tc: bool, key_size: int):
        self.compiled, self.query, self.answers, self.counts = compiled, query, answers, counts
        self.ra, self.limit, self.our_payload, self.set_tc = ra, limit, our_payload, set_tc
        self.version = compiled.version
        self.replies: list = [None] * compiled.variants
        self.fixed = compiled.fixed
        self.size = key_size + ENTRY_OVERHEAD + compiled.variants * (compiled.records_size + key_size)
        self.tally: dict[str, int] | None = None if counts.topology is None else {}  # answers by client address

    def body(self, snap: Snapshot, rng: random.Random, who: str) -> bytes | None:
        """The reply after its ID for a client at `who`, counted; None when the catalog changed what it was
        built from."""
        if self.version != snap.version:
            if not valid(self.compiled, snap):
                return None
            if self.compiled.plan.soa_domain:   # the SOA serial is the version
                self.replies = [None] * len(self.replies)
            self.version = snap.version
        g, v, order = self.draw(rng, who)
        if v < 0:
            return self.render(snap, g, order)[2:]
        body = self.replies[v]
        if body is None:
            body = self.replies[v] = self.render(snap, g, order)[2:]
        return body

    def draw(self, rng: random.Random, who: str) -> tuple[int, int, Order]:
        """One answer's choice (weighting.choose), counted."""
        c = self.compiled
        counts = self.counts
        counts.queries[c.count_key] += 1
        tally = self.tally
        if tally is not None:
            try:
                tally[who] += 1
            except KeyError:
                counts.topology.first(tally, who, self.query.qname_lower)
        if self.fixed:   # what choose gives, without the call
            g, v, order = 0, 0, c.choices.orders[0][0] if c.groups else ()
        else:
            g, v, order = choose(c.choices, rng)
        if c.split_keys:
            counts.splits[c.split_keys[g]] += 1
        if c.zone_keys:
            counts.locality[c.zone_keys[g]] += 1
        elif c.plan.denied:
            counts.denied[c.plan.denied] += 1
            log.debug("%s (as %s) may not reach %s: answered NXDOMAIN", who, *c.plan.denied)
        return g, v, order

    def render(self, snap: Snapshot, g: int, order: Order, extra: tuple[bytes, ...] = ()) -> bytes:
        c = self.compiled
        soa = self.answers.soa(c.plan.soa_domain, snap) if c.plan.soa_domain else b""
        return render(c, self.query, g, order, soa=soa, ra=self.ra, limit=self.limit, our_payload=self.our_payload,
                      set_tc=self.set_tc, extra=extra)


class Forwarded:
    """An upstream reply for one exact query, rendered anew when its age in whole seconds changes."""

    __slots__ = ("compiled", "cached", "query", "current", "clock", "counts", "limit", "our_payload", "age",
                 "reply", "size", "stamp", "count_key")

    def __init__(self, compiled: Compiled, cached: Cached, query: Query, *, current: Callable[[Query], Cached | None],
                 clock: Callable[[], float], counts: Counts, limit: int, our_payload: int, key_size: int):
        self.compiled, self.cached, self.query, self.current, self.clock = compiled, cached, query, current, clock
        self.counts, self.limit, self.our_payload = counts, limit, our_payload
        self.age, self.reply = -1, b""
        self.size = key_size + ENTRY_OVERHEAD + len(cached.reply.data)
        self.count_key = (query.qtype, cached.reply.rcode, "forward")

    def body(self, snap: Snapshot, rng: random.Random, who: str) -> bytes | None:
        """None once the upstream reply expired or left the forwarder's cache, or the name became ours."""
        if self.compiled.version != snap.version and not valid(self.compiled, snap):
            return None
        now = self.clock()
        cached = self.cached
        if now >= cached.expires:
            return None
        age = int(now - cached.stored)
        if age != self.age:
            if self.current(self.query) is not cached:   # also keeps the forwarder's entry in use
                return None
            self.reply = cached.render(self.query, now, our_payload=self.our_payload, limit=self.limit)[2:]
            self.age = age
        self.counts.queries[self.count_key] += 1
        self.counts.forward["hit"] += 1
        return self.reply
