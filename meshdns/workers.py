"""`--workers N`: extra DNS processes sharing the port with SO_REUSEPORT.

The primary process owns every source, the API and the health checks; each
worker only answers DNS. The primary streams catalog changes to the workers
(the merged entries that changed, and the version, so SOA serials agree), and
each worker applies them to a replica store of its own. Sources are followed
once (one Kubernetes watch per cluster, one set of health checks), and a
worker that dies is restarted with a full copy. Workers send their query and
forwarding counters back so /metrics covers every process.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import signal
import threading
import time
from dataclasses import dataclass, field

from .catalog.model import SourceState
from .catalog.snapshot import Snapshot
from .catalog.store import Change, Store
from .config import Config
from .dns.stats import DnsStats
from .dns.topology import merged
from .forward.forwarder import ForwardCounts

log = logging.getLogger("meshdns.workers")
REPLICA_SOURCE = "primary"


@dataclass(frozen=True)
class Delta:
    version: int
    services: dict = field(default_factory=dict)   # key -> instances (() = gone)
    nodes: dict = field(default_factory=dict)      # key -> Node | None
    splits: dict = field(default_factory=dict)     # name -> Split | None
    zones: dict = field(default_factory=dict)      # origin -> Zone | None
    intentions: dict = field(default_factory=dict)  # destination -> Intention | None
    full: bool = False
    queries: dict = field(default_factory=dict)    # ID -> PreparedQuery | None


def delta_for(snap: Snapshot, change: Change) -> Delta:
    return Delta(
        version=snap.version,
        services={k: snap.services.get(k, ()) for k in change.services},
        nodes={k: snap.nodes.get(k) for k in change.nodes},
        splits={k: snap.splits.get(k) for k in change.splits},
        zones={k: (snap.zones[k].zone if k in snap.zones else None) for k in change.zones},
        intentions={k: snap.intentions.get(k) for k in change.intentions},
        queries={k: snap.queries.get(k) for k in change.queries},
    )


def full_delta(snap: Snapshot) -> Delta:
    return Delta(version=snap.version, services=dict(snap.services), nodes=dict(snap.nodes),
                 splits=dict(snap.splits), zones={k: z.zone for k, z in snap.zones.items()},
                 intentions=dict(snap.intentions), queries=dict(snap.queries), full=True)


class Replica:
    """Applies deltas to a store holding one source: the primary's merged catalog."""

    def __init__(self, store: Store):
        self.store = store
        self.state = SourceState()
        self.applied = 0

    def apply(self, d: Delta) -> None:
        def merged(old: dict, new: dict) -> dict:
            out = {} if d.full else dict(old)
            for k, v in new.items():
                if v:
                    out[k] = v
                else:
                    out.pop(k, None)
            return out

        self.state = SourceState(services=merged(self.state.services, d.services),
                                 nodes=merged(self.state.nodes, d.nodes),
                                 splits=merged(self.state.splits, d.splits),
                                 zones=merged(self.state.zones, d.zones),
                                 intentions=merged(self.state.intentions, d.intentions),
                                 queries=merged(self.state.queries, d.queries))
        self.store.publish(REPLICA_SOURCE, self.state, changed=None if d.full else set(d.services),
                           version=d.version)
        self.applied += 1


# ---------------------------------------------------------------------------
# primary side


class _Worker:
    def __init__(self, index: int):
        self.index = index
        self.process: multiprocessing.process.BaseProcess | None = None
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.stats = DnsStats()
        self.forward: ForwardCounts | None = None
        self.topology: dict = {}  # minute -> (counts by (address, name), dropped)
        self.started = 0.0


class WorkerPool:
    """Built with the rest of the server (the DNS handler reads its counters); `start` runs the processes
    once the primary has bound the port they share."""

    def __init__(self, cfg: Config, store: Store, *, count: int):
        self.cfg = cfg
        self.store = store
        self.port = 0
        self.workers = [_Worker(i + 1) for i in range(count)]
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = False
        store.subscribe_changes(self._on_change)

    def _on_change(self, snap: Snapshot, change: Change) -> None:
        delta = delta_for(snap, change)
        for w in self.workers:
            w.outbox.put(delta)

    def _start(self, w: _Worker) -> None:
        to_worker_r, to_worker_w = self._ctx.Pipe(duplex=False)
        from_worker_r, from_worker_w = self._ctx.Pipe(duplex=False)
        w.outbox = queue.SimpleQueue()
        w.outbox.put(full_delta(self.store.snapshot))
        cfg = self.cfg
        w.process = self._ctx.Process(target=worker_main, args=(cfg, self.port, to_worker_r, from_worker_w, w.index),
                                      name=f"meshdns-dns-{w.index}", daemon=True)
        w.process.start()
        w.started = time.monotonic()
        to_worker_r.close()
        from_worker_w.close()
        threading.Thread(target=_sender, args=(w.outbox, to_worker_w), daemon=True,
                         name=f"meshdns-feed-{w.index}").start()
        threading.Thread(target=self._receiver, args=(w, from_worker_r), daemon=True,
                         name=f"meshdns-counts-{w.index}").start()
        log.info("dns worker %d started (pid %d)", w.index, w.process.pid)

    def _receiver(self, w: _Worker, conn) -> None:
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                return
            if kind == "stats":
                w.stats, w.forward = payload
            elif kind == "topology":
                w.topology = merged(w.topology, payload, keep_minutes=int(self.cfg.ui.topology_window // 60))

    def stats(self) -> list[DnsStats]:
        """The latest counters of every worker (the primary's own are on its DnsHandler)."""
        return [w.stats for w in self.workers]

    def topology(self) -> list[dict]:
        """Every worker's topology buckets, as last reported."""
        return [w.topology for w in self.workers]

    def forward_counts(self) -> list[ForwardCounts]:
        """The latest forwarding counters of every worker that forwards."""
        return [w.forward for w in self.workers if w.forward is not None]

    async def start(self, port: int) -> None:
        self.port = port
        for w in self.workers:
            self._start(w)

    async def run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            for w in self.workers:
                if w.process is not None and not w.process.is_alive() and not self._stopping:
                    if time.monotonic() - w.started < 5.0:
                        await asyncio.sleep(5.0)  # crash loop: slow down
                    log.error("dns worker %d exited with %s; restarting", w.index, w.process.exitcode)
                    self._start(w)

    async def close(self) -> None:
        self._stopping = True
        for w in self.workers:
            w.outbox.put(None)
        deadline = time.monotonic() + 5.0
        for w in self.workers:
            if w.process is None:
                continue
            while w.process.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(2)


def _sender(outbox: queue.SimpleQueue, conn) -> None:
    while True:
        item = outbox.get()
        try:
            conn.send(item)
        except (OSError, EOFError):
            return
        if item is None:
            conn.close()
            return


# ---------------------------------------------------------------------------
# worker side


def worker_main(cfg: Config, port: int, inbox, outbox, index: int) -> None:
    from .cli import setup_logging
    setup_logging(cfg.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the primary decides when we stop
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_worker(cfg, port, inbox, outbox, index))


async def _worker(cfg: Config, port: int, inbox, outbox, index: int) -> None:
    from .app import make_handler, make_server

    loop = asyncio.get_running_loop()
    store = Store(datacenter=cfg.datacenter)
    replica = Replica(store)
    handler, forwarder = make_handler(cfg, store)
    dns = make_server(cfg, handler)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def read() -> None:
        while True:
            try:
                delta = inbox.recv()
            except (EOFError, OSError):
                delta = None
            if delta is None:
                loop.call_soon_threadsafe(stop.set)
                return
            loop.call_soon_threadsafe(replica.apply, delta)

    threading.Thread(target=read, daemon=True, name="meshdns-replica").start()
    while not replica.applied and not stop.is_set():  # the first (full) copy
        await asyncio.sleep(0.01)
    await dns.start(cfg.dns.listen[0], port, reuse_port=True)
    log.info("dns worker %d answering on port %d", index, port)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 2.0)
        except TimeoutError:
            pass
        try:
            outbox.send(("stats", (handler.counted(), forwarder.counts() if forwarder is not None else None)))
            if handler.topology is not None:
                outbox.send(("topology", handler.topology.export()))
        except (OSError, EOFError):
            break
    await dns.close()
    if forwarder is not None:
        await forwarder.close()
