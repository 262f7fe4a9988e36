"""Response-rate limiting per client network, so meshdns cannot be used to amplify.

A token bucket per /24 (IPv4) or /56 (IPv6): `rate` responses a second with a
burst of the same size. Over the limit, every `slip`-th response is sent as
an empty truncated reply (a real client retries over TCP, which cannot be
spoofed) and the rest are dropped. Pure apart from the clock it is given.
"""
from __future__ import annotations

import ipaddress
from typing import Callable

from cachetools import LRUCache

from ..catalog.validate import source_address


class RateLimiter:
    def __init__(self, *, rate: int, exempt: tuple[str, ...], clock: Callable[[], float], slip: int = 2,
                 max_buckets: int = 100_000):
        self.rate = float(rate)
        self.slip = slip
        self.clock = clock
        self.max_buckets = max_buckets
        self._exempt = [ipaddress.ip_network(c, strict=False) for c in exempt]
        # Least recently used goes first: a flood from many spoofed networks pushes out only networks
        # that have gone quiet, never one that keeps sending (its limit is what matters).
        self._buckets: LRUCache = LRUCache(max_buckets)   # prefix -> [tokens, last time, over-limit count]
        self._prefix: LRUCache = LRUCache(max_buckets)    # client IP -> prefix (None: exempt)
        self.dropped = 0
        self.slipped = 0

    def _prefix_of(self, ip: str) -> str | None:
        prefix = self._prefix.get(ip, "")
        if prefix == "":
            addr = source_address(ip)
            if addr is None:
                return None
            if any(addr in n for n in self._exempt):
                prefix = None
            else:
                bits = 24 if addr.version == 4 else 56
                prefix = str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))
            self._prefix[ip] = prefix
        return prefix

    def check(self, ip: str) -> str:
        """"send", "slip" (send an empty TC reply) or "drop"."""
        prefix = self._prefix_of(ip)
        if prefix is None:
            return "send"
        now = self.clock()
        bucket = self._buckets.get(prefix)
        if bucket is None:
            bucket = self._buckets[prefix] = [self.rate, now, 0]
        tokens = min(self.rate, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return "send"
        bucket[0] = tokens
        bucket[2] += 1
        if self.slip and bucket[2] % self.slip == 0:
            self.slipped += 1
            return "slip"
        self.dropped += 1
        return "drop"
