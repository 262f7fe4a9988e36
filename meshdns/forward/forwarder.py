"""Forward names that are not ours: rules, cache, single-flight, serve-stale.

Which servers: the `[[forwarding.zone]]` rule with the longest matching suffix,
else the recursors; a name inside our own domains is never forwarded, whatever
the rules say. The DnsHandler asks `handles()` first and answers REFUSED when
it is False, so "nothing applies" and "ours" both end as REFUSED.

Concurrent identical misses (same cache key) share one upstream query. When
every upstream fails, an expired cached answer still within `serve_stale` is
served with TTL 30 (RFC 8767); otherwise None, which the handler turns into
SERVFAIL. Counters for /metrics live in `stats` (see ForwardStats).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

from ..config import Config
from ..dns.wire import MAX_TCP, NS, Query, own_domain
from .cache import Cached, ReplyCache
from .client import ForwardStats, Server, UpstreamClient
from .message import lower_question

log = logging.getLogger("meshdns.forward")

CacheKey = tuple[str, int, int, bool]

# CoreDNS's forward plugin health-checks with `. IN NS` and waits 1 s for any reply; a slow or
# dead recursor must not make meshdns look dead to it, so that probe is answered by this deadline.
PROBE_DEADLINE = 0.4


@dataclass(frozen=True)
class ForwardCounts:
    """One process's forwarding counters and cache size, as /metrics folds them."""

    stats: ForwardStats
    cache_entries: int


class Forwarder:
    def __init__(self, *, domains: tuple[str, ...], recursors: tuple[Server, ...] = (),
                 zones: tuple[tuple[str, tuple[Server, ...]], ...] = (), timeout: float = 2.0,
                 strategy: str = "sequential", cache: ReplyCache | None = None, udp_payload: int = 1232,
                 rng: random.Random | None = None, peers: Callable[[], list[ForwardCounts]] | None = None):
        self.domains = domains
        self.recursors = recursors
        # longest suffix first, so the first match is the most specific rule
        self.zones = tuple(sorted(zones, key=lambda z: len(z[0]), reverse=True))
        self.udp_payload = udp_payload
        self.stats = ForwardStats()
        self.client = UpstreamClient(timeout=timeout, strategy=strategy, payload=udp_payload,
                                     stats=self.stats, rng=rng)
        self.cache = cache if cache is not None else ReplyCache(max_entries=0)
        self.clock = self.cache.clock   # the time cached replies age in
        self._inflight: dict[CacheKey, asyncio.Task] = {}
        self.peers = peers  # the worker processes' counters; each worker has a cache of its own

    def counts(self) -> ForwardCounts:
        """This process's counters, copied (safe to send to another process)."""
        return ForwardCounts(self.stats.copy(), len(self.cache))

    def totals(self) -> ForwardCounts:
        """This process's counters plus its workers'."""
        total, entries = self.stats.copy(), len(self.cache)
        for other in self.peers() if self.peers is not None else ():
            total.add(other.stats)
            entries += other.cache_entries
        return ForwardCounts(total, entries)

    def servers_for(self, qname: str) -> tuple[Server, ...]:
        """Upstreams for a lower-case FQDN; () when it must not or cannot be forwarded."""
        if own_domain(qname, self.domains) is not None:
            return ()
        for zone, servers in self.zones:
            if qname == zone or qname.endswith("." + zone):
                return servers
        return self.recursors

    def handles(self, qname: str) -> bool:
        return bool(self.servers_for(qname))

    def key(self, query: Query) -> CacheKey:
        return (query.qname_lower, query.qtype, query.qclass, query.do)

    def cached(self, query: Query) -> Cached | None:
        """The fresh cached reply for this question, if any (nothing is counted: whoever serves it does)."""
        return self.cache.get(self.key(query))

    async def forward(self, query: Query, packet: bytes = b"", *, tcp: bool = False) -> bytes | None:
        """The whole reply for this client (cached, fetched or stale), or None when nothing upstream answered."""
        found = await self.lookup(query, tcp=tcp)
        if found is None:
            return None
        cached, now = found
        return cached.render(query, now, our_payload=self.udp_payload, limit=MAX_TCP)

    async def lookup(self, query: Query, *, tcp: bool = False) -> tuple[Cached, float | None] | None:
        """The reply for this question and the moment to render its TTLs for (None: stale): cached, fetched
        (shared with identical misses), or stale. Each call counts once in stats.cache."""
        servers = self.servers_for(query.qname_lower)
        if not servers:
            return None
        key = self.key(query)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache["hit"] += 1
            return hit, self.cache.clock()
        task = self._inflight.get(key)
        if task is None:
            self.stats.cache["miss"] += 1
            task = asyncio.ensure_future(self._fetch(key, servers, lower_question(query.question), query.do, tcp))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._inflight.pop(key, None) if self._inflight.get(key) is t else None)
        else:
            self.stats.cache["shared"] += 1
        if key[:2] == (".", NS):
            try:
                fetched = await asyncio.wait_for(asyncio.shield(task), PROBE_DEADLINE)
            except TimeoutError:  # the fetch goes on and fills the cache for the next probe
                fetched = None
        else:
            fetched = await asyncio.shield(task)
        if fetched is not None:
            return fetched, fetched.stored
        stale = self.cache.get_stale(key)
        if stale is None:
            return None
        self.stats.cache["stale"] += 1
        log.info("serving a stale answer for %s: every upstream failed", query.qname)
        return stale, None

    async def _fetch(self, key: CacheKey, servers: tuple[Server, ...], question: bytes, do: bool,
                     tcp: bool) -> Cached | None:
        reply = await self.client.resolve(servers, question, do=do, tcp=tcp)
        if reply is None:
            log.debug("every upstream failed for %s", key[0])
            return None
        return self.cache.put(key, reply) or self.cache.entry(reply)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def from_config(cfg: Config, *, clock: Callable[[], float] = time.monotonic,
                peers: Callable[[], list[ForwardCounts]] | None = None) -> Forwarder | None:
    """The forwarder the config asks for, or None when there are no recursors and no zone rules."""
    fwd = cfg.forwarding
    if not fwd.recursors and not fwd.zones:
        return None
    cache = ReplyCache(max_entries=cfg.cache.max_entries, min_ttl=cfg.cache.min_ttl,
                       max_ttl=cfg.cache.max_ttl, serve_stale=cfg.cache.serve_stale, clock=clock)
    return Forwarder(domains=cfg.domains, recursors=fwd.recursors,
                     zones=tuple((z.name, z.servers) for z in fwd.zones), timeout=fwd.timeout,
                     strategy=fwd.strategy, cache=cache, udp_payload=cfg.dns.udp_payload, peers=peers)
