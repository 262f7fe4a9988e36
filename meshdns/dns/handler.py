"""Bytes in, bytes out: the one answer pipeline.

question -> client class -> plan -> rendered reply. A query is first looked up
in the reply cache of its client's class (dns/cache.py) by its bytes after the
ID; only a query not found there is parsed, planned (through the compiled
plans) and rendered, and its entry kept for the next time. Every reply is
assembled by dns/wire.py. This is the one place where errors become rcodes:
WireError carries the client's mistake (FORMERR, NOTIMP, BADVERS, REFUSED or
drop); anything else is ours and becomes SERVFAIL. The server protocols
around it only move bytes.
"""
from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from time import perf_counter
from typing import TYPE_CHECKING, Awaitable, Callable

from ..catalog.store import Store
from . import rdata
from .answer import Compiled
from .cache import Answers, Counts, Entry, Forwarded, Table
from .chase import CHASED_QTYPES, chase
from .clients import Classifier, ClientClass, RecursionPolicy
from .rrl import RateLimiter
from .stats import DnsStats
from .topology import TopologyCounter
from .resolver import ResolverOptions
from .wire import NOERROR, REFUSED, SERVFAIL, Query, WireError, error, limit_for, parse_query, reply

if TYPE_CHECKING:
    from ..forward.forwarder import Forwarder

log = logging.getLogger("meshdns.dns")

Reply = bytes | None | Awaitable[bytes | None]


class Slot:
    """A client class and its reply tables (UDP, TCP)."""

    __slots__ = ("cls", "ra", "tables")

    def __init__(self, cls: ClientClass, ra: bool, budget: int):
        self.cls, self.ra = cls, ra
        self.tables = (Table(budget), Table(budget))


class DnsHandler:
    def __init__(self, store: Store, opts: ResolverOptions, *, udp_payload: int = 1232,
                 enable_truncate: bool = True, rng: random.Random | None = None,
                 forwarder: "Forwarder | None" = None, recursion: RecursionPolicy | None = None,
                 classifier: Classifier | None = None, rate_limiter: RateLimiter | None = None,
                 topology: TopologyCounter | None = None, peers: Callable[[], list[DnsStats]] | None = None,
                 max_answers: int = 200_000, reply_budget: int = 16 << 20, max_clients: int = 65536,
                 max_classes: int = 256):
        self.store = store
        self.opts = opts
        self.udp_payload = udp_payload
        self.enable_truncate = enable_truncate
        self.rng = rng or random.Random()
        self.forwarder = forwarder
        self.classifier = classifier or Classifier(recursion or RecursionPolicy(()))
        self.stats = DnsStats()
        self.rrl = rate_limiter
        self.topology = topology  # who asked for which name (None: not counted)
        self.answers = Answers(opts, max_entries=max_answers)
        self.reply_budget = reply_budget
        self.max_clients = max_clients
        self.max_classes = max(1, max_classes)
        self.internal_errors = 0
        self.peers = peers  # the worker processes' counters
        self._counts = Counts(self.stats.queries, self.stats.splits,
                              forwarder.stats.cache if forwarder is not None else None, topology,
                              locality=self.stats.locality, denied=self.stats.denied)
        self._slots: dict[ClientClass, Slot] = {}
        self._clients: OrderedDict[str, Slot] = OrderedDict()   # source IP -> its class, oldest first
        self._classified = store.snapshot   # the snapshot _clients holds classes for
        self._last_error_log = -1e9

    def counted(self) -> DnsStats:
        """This process's counters, with the size of its reply cache now."""
        out = self.stats.copy()
        out.classes = len(self._slots)
        out.reply_bytes = sum(table.size for slot in self._slots.values() for table in slot.tables)
        return out

    def totals(self) -> DnsStats:
        """This process's counters plus its workers'."""
        total = self.counted()
        for other in self.peers() if self.peers is not None else ():
            total.add(other)
        return total

    def handle(self, data: bytes, client: tuple, *, tcp: bool) -> Reply:
        started = perf_counter()
        if self.rrl is not None and not tcp:
            verdict = self.rrl.check(client[0])
            if verdict != "send":
                reply = self._slip(data) if verdict == "slip" else None
                self.stats.observe(perf_counter() - started)
                return reply
        snap = self.store.snapshot
        if snap is not self._classified:
            self._reclassify(snap)
        slot = self._clients.get(client[0]) or self.client_class(client[0])
        table = slot.tables[tcp]
        key = data[2:]
        entry = table.get(key)
        if entry is not None:
            try:
                body = entry.body(snap, self.rng, client[0])
            except Exception:   # answered below, where errors become rcodes
                log.debug("a kept reply failed", exc_info=True)
                body = None
            if body is not None:
                if table.puts - entry.stamp > table.half:   # Table.touch, inline
                    table.move_to_end(key)
                    entry.stamp = table.puts
                reply = data[:2] + body
                self.stats.observe(perf_counter() - started)
                return reply
        reply = self._answer(data, client[0], slot, tcp)
        if reply is None or isinstance(reply, bytes):
            self.stats.observe(perf_counter() - started)
            return reply
        return self._timed(reply, started)

    async def _timed(self, reply: Awaitable[bytes | None], started: float) -> bytes | None:
        try:
            return await reply
        finally:
            self.stats.observe(perf_counter() - started)

    @property
    def classes(self) -> int:
        """How many client classes have replies kept (at most max_classes)."""
        return len(self._slots)

    def client_class(self, ip: str) -> Slot:
        """The class of a source address (worked out once per address while it keeps asking, and again
        after a catalog change when the class depends on the catalog)."""
        slot = self._clients.get(ip)
        if slot is None:
            cls = self.classifier.classify(self._classified, ip)
            slot = self._slots.get(cls)
            if slot is None:
                if len(self._slots) >= self.max_classes:
                    self._forget_class()
                slot = self._slots[cls] = Slot(cls, cls.recursion and self.forwarder is not None, self.reply_budget)
            if len(self._clients) >= self.max_clients:
                self._clients.popitem(last=False)
            self._clients[ip] = slot
        return slot

    def _forget_class(self) -> None:
        """The oldest class goes with its replies, and the clients in it are worked out again when they ask
        (classes are few, zones x the services intentions name, so this is rare)."""
        old = self._slots.pop(next(iter(self._slots)))
        self._clients = OrderedDict((ip, s) for ip, s in self._clients.items() if s is not old)

    def _reclassify(self, snap) -> None:
        self._classified = snap
        if self.classifier.reads_catalog:
            self._clients.clear()

    def _answer(self, data: bytes, who: str, slot: Slot, tcp: bool) -> Reply:
        """A query not answered from the reply cache: parse strictly, plan, render, keep."""
        query = None
        try:
            query = parse_query(data)
            return self._resolve(query, data, who, slot, tcp)
        except WireError as exc:
            if exc.rcode is None or exc.query is None:
                self.stats.queries[(0, "dropped", "invalid")] += 1
                return None
            self.stats.queries[(exc.query.qtype, exc.rcode, "invalid")] += 1
            return error(exc.query, exc.rcode, our_payload=self.udp_payload)
        except Exception:
            self._log_internal_error(query)
            if query is None:
                return None
            self.stats.queries[(query.qtype, SERVFAIL, "error")] += 1
            return error(query, SERVFAIL, our_payload=self.udp_payload)

    def _resolve(self, query: Query, data: bytes, who: str, slot: Slot, tcp: bool) -> Reply:
        snap = self.store.snapshot
        compiled = self.answers.get(query, slot.cls, snap)
        limit = limit_for(query, tcp=tcp, our_payload=self.udp_payload)
        if compiled.forward:
            return self._forward(query, data, who, slot, tcp, compiled, limit)
        entry = Entry(compiled, query, self.answers, self._counts, ra=slot.ra, limit=limit,
                      our_payload=self.udp_payload, set_tc=self.enable_truncate, key_size=len(data))
        if slot.ra and compiled.cname_only and query.qtype in CHASED_QTYPES:
            return self._chased(entry, who, tcp)
        return self._keep(data, who, slot.tables[tcp], entry)

    def _keep(self, data: bytes, who: str, table: Table, entry: Entry | Forwarded) -> bytes:
        """The first reply from a new entry, which is kept for the next time this query is asked."""
        body = entry.body(self.store.snapshot, self.rng, who)
        table.put(data[2:], entry)
        return data[:2] + body

    def _slip(self, data: bytes) -> bytes | None:
        """An empty reply with TC: "ask again over TCP" (rate limiting)."""
        try:
            query = parse_query(data)
        except WireError:
            return None
        return reply(query, NOERROR, our_payload=self.udp_payload, tc=True)

    def _log_internal_error(self, query: Query | None) -> None:
        """A traceback, at most one per 10 s: a flood of bad packets must not become a flood of logs."""
        now = time.monotonic()
        self.internal_errors += 1
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.exception("internal error answering %r (%d internal errors so far)",
                          query.qname if query else "a query", self.internal_errors)

    # -- names that are not ours -------------------------------------------------

    def _forward(self, query: Query, data: bytes, who: str, slot: Slot, tcp: bool, compiled: Compiled,
                 limit: int) -> Reply:
        fwd = self.forwarder
        if not slot.ra or not fwd.handles(query.qname_lower):
            self.stats.refused["client" if fwd is not None and not slot.ra else "no_upstream"] += 1
            self.stats.queries[(query.qtype, REFUSED, compiled.plan.kind)] += 1
            return error(query, REFUSED, our_payload=self.udp_payload)
        cached = fwd.cached(query)
        if cached is None:
            return self._fetch(query, tcp, limit)
        entry = Forwarded(compiled, cached, query, current=fwd.cached, clock=fwd.clock, counts=self._counts,
                          limit=limit, our_payload=self.udp_payload, key_size=len(data))
        return self._keep(data, who, slot.tables[tcp], entry)

    async def _fetch(self, query: Query, tcp: bool, limit: int) -> bytes:
        try:
            found = await self.forwarder.lookup(query, tcp=tcp)
        except Exception:
            log.exception("forwarding %s failed", query.qname)
            found = None
        if found is None:
            self.stats.queries[(query.qtype, SERVFAIL, "forward")] += 1
            return error(query, SERVFAIL, our_payload=self.udp_payload)
        cached, now = found
        self.stats.queries[(query.qtype, cached.reply.rcode, "forward")] += 1
        return cached.render(query, now, our_payload=self.udp_payload, limit=limit)

    def _chased(self, entry: Entry, who: str, tcp: bool) -> Reply:
        """A lone CNAME to a name elsewhere, for a client offered recursion: its target is resolved
        upstream and appended (not kept: the reply depends on the upstream's)."""
        snap = self.store.snapshot
        g, _, order = entry.draw(self.rng, who)
        target = entry.compiled.groups[g].cname
        if snap.zone_for(target) is not None or not self.forwarder.handles(target):  # never forward our zones' names
            return entry.render(snap, g, order)

        async def chased() -> bytes:
            try:
                extra = await chase(self.forwarder, entry.query, target, tcp=tcp)
            except Exception:
                log.exception("resolving the CNAME target for %s failed", entry.query.qname)
                extra = ()
            return entry.render(snap, g, order, extra)
        return chased()


QTYPE_NAMES = {rdata.A: "A", rdata.NS: "NS", rdata.CNAME: "CNAME", rdata.SOA: "SOA", rdata.PTR: "PTR",
               rdata.TXT: "TXT", rdata.AAAA: "AAAA", rdata.SRV: "SRV", rdata.ANY: "ANY", rdata.HINFO: "HINFO"}
