"""Ask upstream servers one question, failing over until one gives a usable answer.

Each attempt gets a random 16-bit ID and (UDP) a fresh socket with a random
source port. A UDP reply with TC is retried over TCP on the same server; a
client that came over TCP is asked for over TCP directly. Timeout, network
error, SERVFAIL and REFUSED move on to the next server (in configured order, or
shuffled with strategy "random"); when all fail the result is None.
"""
from __future__ import annotations

import logging
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

from ..dns.wire import REFUSED, SERVFAIL
from .message import Reply, build_query, parse_reply, rcode_name
from .transport import tcp_exchange, udp_exchange

log = logging.getLogger("meshdns.forward")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Server = tuple[str, int]


def server_name(server: Server) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class ForwardStats:
    """Plain counters for the /metrics collector to fold (monotonic, never reset).

    - replies[(upstream, outcome)]: upstream exchanges; upstream is "ip:port", outcome
      an rcode name ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", ...), "timeout" or "error".
    - latency_sum[upstream] (seconds) and latency_count[upstream]: exchanges that got a reply;
      latency_buckets[(upstream, le)]: cumulative counts of replies within `le` seconds, for
      le in LATENCY_BUCKETS (the +Inf bucket is latency_count).
    - ignored[upstream]: replies dropped because their ID or question did not match.
    - tcp_retries[upstream]: UDP replies with TC retried over TCP.
    - cache["hit" | "miss" | "stale" | "shared"]: answers from the cache, queries that
      needed upstream, stale answers served after every upstream failed, and misses
      that joined an identical query already in flight instead of asking again.
    """

    replies: Counter = field(default_factory=Counter)
    latency_sum: Counter = field(default_factory=Counter)
    latency_count: Counter = field(default_factory=Counter)
    latency_buckets: Counter = field(default_factory=Counter)
    ignored: Counter = field(default_factory=Counter)
    tcp_retries: Counter = field(default_factory=Counter)
    cache: Counter = field(default_factory=Counter)

    def observe(self, upstream: str, seconds: float) -> None:
        self.latency_sum[upstream] += seconds
        self.latency_count[upstream] += 1
        for le in LATENCY_BUCKETS:
            if seconds <= le:
                self.latency_buckets[(upstream, le)] += 1

    def add(self, other: "ForwardStats") -> None:
        for name in ("replies", "latency_sum", "latency_count", "latency_buckets", "ignored", "tcp_retries",
                     "cache"):
            getattr(self, name).update(getattr(other, name))

    def copy(self) -> "ForwardStats":
        out = ForwardStats()
        out.add(self)
        return out


class UpstreamClient:
    def __init__(self, *, timeout: float, strategy: str = "sequential", payload: int = 1232,
                 stats: ForwardStats | None = None, rng: random.Random | None = None):
        self.timeout = timeout
        self.strategy = strategy
        self.payload = payload
        self.stats = stats or ForwardStats()
        self.rng = rng or random.Random()

    def order(self, servers: tuple[Server, ...]) -> list[Server]:
        order = list(servers)
        if self.strategy == "random":
            self.rng.shuffle(order)
        return order

    async def resolve(self, servers: tuple[Server, ...], question: bytes, *, do: bool,
                      tcp: bool = False) -> Reply | None:
        """The first usable reply from servers (question: wire form, lower-cased), or None."""
        for server in self.order(servers):
            reply = await self.exchange(server, question, do=do, tcp=tcp)
            if reply is not None and reply.rcode not in (SERVFAIL, REFUSED):
                return reply
        return None

    async def exchange(self, server: Server, question: bytes, *, do: bool, tcp: bool = False) -> Reply | None:
        """One server: UDP (TCP on TC, or TCP only); None on timeout or network error."""
        name = server_name(server)
        started = time.monotonic()
        try:
            reply = None
            if not tcp:
                reply = await self._once(udp_exchange, server, question, do, name)
                if reply.tc:
                    self.stats.tcp_retries[name] += 1
            if reply is None or reply.tc:
                reply = await self._once(tcp_exchange, server, question, do, name)
        except TimeoutError:
            self.stats.replies[(name, "timeout")] += 1
            log.debug("upstream %s timed out", name)
            return None
        except (OSError, EOFError) as exc:
            self.stats.replies[(name, "error")] += 1
            log.debug("upstream %s failed: %s", name, exc)
            return None
        self.stats.observe(name, time.monotonic() - started)
        self.stats.replies[(name, rcode_name(reply.rcode))] += 1
        return reply

    async def _once(self, exchange, server: Server, question: bytes, do: bool, name: str) -> Reply:
        qid = secrets.randbits(16)
        packet = build_query(question, qid=qid, do=do, payload=self.payload)

        def accept(data: bytes) -> Reply | None:
            reply = parse_reply(data, qid=qid, question=question)
            if reply is None:
                self.stats.ignored[name] += 1
            return reply

        return await exchange(server, packet, accept, timeout=self.timeout)
