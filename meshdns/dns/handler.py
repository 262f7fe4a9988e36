"""Bytes in, bytes out: parse, resolve against the current snapshot, encode.

This is the one place where errors become rcodes: WireError carries the
client's mistake (FORMERR, NOTIMP, BADVERS, REFUSED or drop); anything else is
ours and becomes SERVFAIL. The server protocols around it only move bytes.
"""
from __future__ import annotations

import ipaddress
import logging
import random
import time
from time import perf_counter
from typing import Awaitable, Callable, Protocol

from ..catalog.store import Store
from ..forward.chase import chase, cname_target
from ..forward.cache import Countdown
from ..forward.client import ForwardStats
from . import rdata
from .fastpath import FastPath
from .rrl import RateLimiter, slipped_reply
from .stats import DnsStats
from .topology import TopologyCounter
from .resolver import REFUSED, SERVFAIL, ResolverOptions, plan, realize
from .wire import MAX_TCP, Query, WireError, encode_response, error_response, parse_query, response_limit

log = logging.getLogger("meshdns.dns")

Reply = bytes | None | Awaitable[bytes | None]


class Forwarder(Protocol):
    clock: Callable[[], float]
    stats: "ForwardStats"

    def handles(self, qname: str) -> bool: ...
    def cached(self, query: Query) -> bytes | None: ...
    def countdown(self, query: Query) -> "Countdown | None": ...
    async def forward(self, query: Query, packet: bytes, *, tcp: bool) -> bytes | None: ...


class RecursionPolicy:
    """Which clients may have non-catalog names forwarded for them."""

    def __init__(self, cidrs: tuple[str, ...]):
        self._nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._cache: dict[str, bool] = {}

    def allows(self, ip: str) -> bool:
        ok = self._cache.get(ip)
        if ok is None:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                ok = False
            else:
                if addr.version == 6 and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                ok = any(addr in n for n in self._nets)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[ip] = ok
        return ok


class DnsHandler:
    def __init__(self, store: Store, opts: ResolverOptions, *, udp_payload: int = 1232,
                 enable_truncate: bool = True, rng: random.Random | None = None,
                 forwarder: Forwarder | None = None, recursion: RecursionPolicy | None = None,
                 rate_limiter: RateLimiter | None = None, topology: TopologyCounter | None = None,
                 peers: Callable[[], list[DnsStats]] | None = None):
        self.store = store
        self.opts = opts
        self.udp_payload = udp_payload
        self.enable_truncate = enable_truncate
        self.rng = rng or random.Random()
        self.forwarder = forwarder
        self.recursion = recursion or RecursionPolicy(())
        self.stats = DnsStats()
        self.fast = FastPath(opts, udp_payload=udp_payload, enable_truncate=enable_truncate)
        self.rrl = rate_limiter
        self.topology = topology  # who asked for which name (None: not counted)
        self.internal_errors = 0
        self.peers = peers  # the worker processes' counters
        self._last_error_log = -1e9
        if forwarder is not None:
            self.fast.forward_hit = self._forward_hit
            self.fast.forward_countdown = forwarder.countdown

    def totals(self) -> DnsStats:
        """This process's counters plus its workers'."""
        total = self.stats.copy()
        for other in self.peers() if self.peers is not None else ():
            total.add(other)
        return total

    def handle(self, data: bytes, client: tuple, *, tcp: bool) -> Reply:
        started = perf_counter()
        reply = self._handle(data, client, tcp)
        if reply is None or isinstance(reply, bytes):
            self.stats.observe(perf_counter() - started)
            return reply
        return self._timed(reply, started)

    async def _timed(self, reply: Awaitable[bytes | None], started: float) -> bytes | None:
        try:
            return await reply
        finally:
            self.stats.observe(perf_counter() - started)

    def _handle(self, data: bytes, client: tuple, tcp: bool) -> Reply:
        if self.rrl is not None and not tcp:
            verdict = self.rrl.check(client[0])
            if verdict != "send":
                return slipped_reply(data) if verdict == "slip" else None
        ra = self.forwarder is not None and self.recursion.allows(client[0])
        snap = self.store.snapshot
        if not tcp:
            hit = self.fast.replay.reply(data, ra, snap, self.rng)
            if hit is not None:
                reply, replay, target = hit
                self.stats.queries[replay.count_key] += 1
                if self.topology is not None:
                    self.topology.count(client[0], replay.qname)
                if target:
                    self.stats.splits[(replay.split, target)] += 1
                return reply
            if ra:
                hit = self.fast.replay.forwarded(data, snap, self.forwarder.clock())
                if hit is not None:
                    reply, count_key = hit
                    self.stats.queries[count_key] += 1
                    self.forwarder.stats.cache["hit"] += 1
                    return reply
        try:
            done = self.fast.answer(data, snap, self.rng, tcp=tcp, ra=ra)
        except Exception:  # the general path below decides what the client gets
            log.debug("fast path declined a packet", exc_info=True)
            done = None
        if done is not None:
            reply, entry, target = done
            if entry.forward:
                self.stats.queries[(entry.count_key[0], reply[3] & 0xF, "forward")] += 1
            else:
                self.stats.queries[entry.count_key] += 1
                if self.topology is not None:
                    self.topology.count(client[0], entry.qname)
                if target:
                    self.stats.splits[(entry.plan.split, target)] += 1
            return reply
        return self.handle_general(data, client, tcp=tcp)

    def handle_general(self, data: bytes, client: tuple, *, tcp: bool) -> Reply:
        """Every query shape, no caches: parse strictly, plan, realize, encode."""
        query = None
        try:
            query = parse_query(data)
            return self._answer(query, data, client, tcp)
        except WireError as exc:
            if exc.rcode is None or exc.query is None:
                self.stats.queries[(0, "dropped", "invalid")] += 1
                return None
            self.stats.queries[(exc.query.qtype, exc.rcode, "invalid")] += 1
            return error_response(exc.query, exc.rcode, our_payload=self.udp_payload)
        except Exception:
            self._log_internal_error(query)
            if query is None:
                return None
            self.stats.queries[(query.qtype, SERVFAIL, "error")] += 1
            return error_response(query, SERVFAIL, our_payload=self.udp_payload)

    def _log_internal_error(self, query: Query | None) -> None:
        """A traceback, at most one per 10 s: a flood of bad packets must not become a flood of logs."""
        now = time.monotonic()
        self.internal_errors += 1
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.exception("internal error answering %r (%d internal errors so far)",
                          query.qname if query else "a query", self.internal_errors)

    def _answer(self, query: Query, data: bytes, client: tuple, tcp: bool) -> Reply:
        p = plan(query.qname_lower, query.qtype, self.store.snapshot, self.opts)
        may_recurse = self.forwarder is not None and self.recursion.allows(client[0])
        if p.forward:
            if may_recurse and self.forwarder.handles(query.qname_lower):
                cached = self.forwarder.cached(query)
                if cached is not None:
                    return self._forwarded(query, cached, tcp)
                return self._forward(query, data, tcp)
            self.stats.refused["no_upstream" if may_recurse or self.forwarder is None else "client"] += 1
            self.stats.queries[(query.qtype, REFUSED, p.kind)] += 1
            return error_response(query, REFUSED, our_payload=self.udp_payload)
        ans = realize(p, self.rng)
        self.stats.queries[(query.qtype, ans.rcode, p.kind)] += 1
        if self.topology is not None:
            self.topology.count(client[0], query.qname_lower)
        if ans.split:
            self.stats.splits[(ans.split, ans.target)] += 1
        target = cname_target(query.qtype, ans) if may_recurse else None
        if target is not None and self.store.snapshot.zone_for(target) is None:  # never forward our zones' names
            return self._chase(query, ans, tcp)
        limit = response_limit(query, tcp=tcp, our_payload=self.udp_payload)
        return encode_response(query, ans, limit=limit, our_payload=self.udp_payload,
                               recursion_available=may_recurse, set_tc=self.enable_truncate)

    async def _chase(self, query: Query, ans: Answer, tcp: bool) -> bytes:
        """A hostname instance's CNAME with the target's records resolved upstream appended."""
        try:
            ans = await chase(self.forwarder, query, ans, tcp=tcp)
        except Exception:
            log.exception("resolving the CNAME target for %s failed", query.qname)
        limit = response_limit(query, tcp=tcp, our_payload=self.udp_payload)
        return encode_response(query, ans, limit=limit, our_payload=self.udp_payload,
                               recursion_available=True, set_tc=self.enable_truncate)

    async def _forward(self, query: Query, data: bytes, tcp: bool) -> bytes | None:
        try:
            reply = await self.forwarder.forward(query, data, tcp=tcp)
        except Exception:
            log.exception("forwarding %s failed", query.qname)
            reply = None
        if reply is None:
            self.stats.queries[(query.qtype, SERVFAIL, "forward")] += 1
            return error_response(query, SERVFAIL, our_payload=self.udp_payload)
        return self._forwarded(query, reply, tcp)

    def _forward_hit(self, query: Query) -> bytes | None:
        if not self.forwarder.handles(query.qname_lower):
            return None
        return self.forwarder.cached(query)

    def _forwarded(self, query: Query, reply: bytes, tcp: bool) -> bytes:
        rcode = reply[3] & 0xF if len(reply) >= 4 else SERVFAIL
        self.stats.queries[(query.qtype, rcode, "forward")] += 1
        if not tcp:
            limit = response_limit(query, tcp=False, our_payload=self.udp_payload)
            if len(reply) > limit:
                return truncated(reply, query, limit)
        return reply[:MAX_TCP]


def truncated(reply: bytes, query: Query, limit: int) -> bytes:
    """An upstream reply too big for this client's UDP: header + question with TC."""
    flags = int.from_bytes(reply[2:4], "big") | 0x0200
    header = reply[:2] + flags.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00\x00\x00"
    return header + query.question


QTYPE_NAMES = {rdata.A: "A", rdata.NS: "NS", rdata.CNAME: "CNAME", rdata.SOA: "SOA", rdata.PTR: "PTR",
               rdata.TXT: "TXT", rdata.AAAA: "AAAA", rdata.SRV: "SRV", rdata.ANY: "ANY", rdata.HINFO: "HINFO"}
