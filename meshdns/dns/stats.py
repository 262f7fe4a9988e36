"""Plain counters the DNS path bumps; /metrics folds them (and the workers') at scrape time."""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

# seconds; answers from the catalog take microseconds, forwarded misses take upstream round trips
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5)


@dataclass
class DnsStats:
    queries: Counter = field(default_factory=Counter)   # (qtype, rcode, name kind) -> n
    splits: Counter = field(default_factory=Counter)    # (split, chosen target) -> n
    refused: Counter = field(default_factory=Counter)   # recursion refused: "client" | "no_upstream"
    locality: Counter = field(default_factory=Counter)  # answers to clients with a zone: "same_zone" | "cross_zone"
    denied: Counter = field(default_factory=Counter)    # names hidden by intentions: (source, destination) -> n
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    reply_bytes: int = 0   # gauges, filled in by DnsHandler.counted(): rendered replies kept...
    classes: int = 0       # ... and the client classes holding them

    def observe(self, seconds: float) -> None:
        self.latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def add(self, other: "DnsStats") -> None:
        self.queries.update(other.queries)
        self.splits.update(other.splits)
        self.refused.update(other.refused)
        self.locality.update(other.locality)
        self.denied.update(other.denied)
        self.latency = [a + b for a, b in zip(self.latency, other.latency)]
        self.latency_sum += other.latency_sum
        self.reply_bytes += other.reply_bytes
        self.classes += other.classes

    def copy(self) -> "DnsStats":
        out = DnsStats()
        out.add(self)
        return out
