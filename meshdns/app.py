"""Wiring: build every component from the config, in dependency order; `run` serves them (lifecycle.py)."""
from __future__ import annotations

import asyncio
import gc
import logging
import random
import resource
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .catalog.store import Store
from .config import Config, ConfigError, read_secret_files
from .catalog.client_class import parse_localities
from .dns.clients import Classifier, Views
from .dns.handler import DnsHandler, RecursionPolicy
from .dns.resolver import ResolverOptions, Soa
from .dns.rrl import RateLimiter
from .dns.server import DnsServer
from .dns.topology import TopologyCounter
from .forward.forwarder import from_config as forwarder_from_config
from .lifecycle import Component, readiness, reload_all, serve_components
from .sources.zones import ZonesSource
from .workers import WorkerPool
from .api.acl import Acl
from .api.app import HttpApi, agent_node
from .api.blocking import Watch
from .api.common import ApiContext
from .health.runner import HealthRunner
from .sources.config_entries import ConfigEntries
from .sources.intentions import IntentionEntries
from .sources.peers import PeerSource
from .sources.prepared_queries import PreparedQueries
from .sources.registrations import Registrations
from .sources.split_revisions import SplitRevisions
from .sources.status import SourceStatus
from .store.records import Records
from .store.setup import open_store, start_store

log = logging.getLogger("meshdns")


def resolver_options(cfg: Config) -> ResolverOptions:
    host = cfg.dns.listen[0]
    ns = () if host in ("0.0.0.0", "::", "") else (host,)
    return ResolverOptions(domains=cfg.domains, only_passing=cfg.dns.only_passing,
                           a_record_limit=cfg.dns.a_record_limit, node_ttl=int(cfg.dns.node_ttl),
                           service_ttl=cfg.dns.service_ttl, ns_addresses=ns,
                           soa=Soa(cfg.dns.soa.min_ttl, cfg.dns.soa.refresh, cfg.dns.soa.retry, cfg.dns.soa.expire),
                           peer_datacenters=tuple(p.datacenter for p in cfg.peers),
                           prefer_same_zone=cfg.dns.prefer_same_zone, same_zone_min=cfg.dns.same_zone_min,
                           enforce_intentions=cfg.dns.enforce_intentions,
                           intentions_default=cfg.dns.intentions_default)


def classifier(cfg: Config) -> Classifier:
    """Client classes: recursion always; zone and identities only when an answer can depend on them (with
    neither feature on, no catalog lookup per client)."""
    views = None
    if cfg.dns.prefer_same_zone or cfg.dns.enforce_intentions:
        views = Views(localities=parse_localities(cfg.localities), zones=cfg.dns.prefer_same_zone,
                      intentions=cfg.dns.enforce_intentions)
    return Classifier(RecursionPolicy(cfg.forwarding.allow_recursion), identify=views)


@dataclass
class App:
    """The built server: its parts by name (for the API and tests) and its components in dependency order."""

    cfg: Config
    store: Store
    db: Records                   # the shared (kind, key) -> JSON records, on SQLite or etcd
    replicas: object              # this replica among the others (store.replicas)
    health: HealthRunner
    zones: ZonesSource
    registrations: Registrations
    handler: DnsHandler
    dns: DnsServer
    api: HttpApi
    components: tuple[Component, ...]
    kubernetes: tuple = ()        # KubernetesSource per cluster
    reverse_syncs: tuple = ()     # ReverseSync per cluster that has it
    peers: tuple = ()             # PeerSource per [[peer]] (other datacenters)
    workers: WorkerPool | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def dns_port(self) -> int:
        return self.dns.port

    @property
    def http_port(self) -> int:
        return self.api.port

    def reload(self) -> None:
        reload_all(self.components)


def make_handler(cfg: Config, store: Store, *, workers: WorkerPool | None = None):
    """The DNS handler (and its forwarder, if any) over a store; the primary and workers share this."""
    forwarder = forwarder_from_config(cfg, peers=workers.forward_counts if workers is not None else None)
    rrl = None
    if cfg.dns.rrl_responses_per_second:
        rrl = RateLimiter(rate=cfg.dns.rrl_responses_per_second, exempt=cfg.dns.rrl_exempt, clock=time.monotonic)
    rng = random.Random(cfg.dns.rng_seed) if cfg.dns.rng_seed is not None else None
    topology = None
    if cfg.ui.topology:
        topology = TopologyCounter(clock=time.monotonic, max_keys=cfg.ui.topology_max_keys,
                                   keep_minutes=int(cfg.ui.topology_window // 60),
                                   peers=workers.topology if workers is not None else None)
    handler = DnsHandler(store, resolver_options(cfg), udp_payload=cfg.dns.udp_payload,
                         enable_truncate=cfg.dns.enable_truncate, forwarder=forwarder, rng=rng,
                         classifier=classifier(cfg), rate_limiter=rrl,
                         topology=topology, peers=workers.stats if workers is not None else None,
                         max_answers=cfg.dns.max_plans, reply_budget=cfg.dns.reply_cache_mb << 20,
                         max_classes=cfg.dns.max_client_classes)
    return handler, forwarder


def make_server(cfg: Config, handler) -> DnsServer:
    return DnsServer(handler, idle_timeout=cfg.dns.tcp_idle_timeout, max_connections=cfg.dns.tcp_max_connections,
                     busy_poll=cfg.dns.busy_poll)


def zones_directory(cfg: Config) -> Path:
    """The zones directory, which must exist: a mistyped path must not start a server that serves nothing."""
    path = Path(cfg.zones).expanduser()
    if not path.is_dir():
        where = path.resolve()
        problem = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError(f"zones: {where} {problem}; create it (it may stay empty) or point --zones / "
                          f"zones = at your zone files")
    return path


def build(cfg: Config) -> App:
    """Every part, collaborators passed in; components listed so that each comes after what it uses."""
    cfg = read_secret_files(cfg)
    zones_dir = zones_directory(cfg)
    store = Store(datacenter=cfg.datacenter)
    # the shared store comes first: its revisions order splits from every source and are X-Consul-Index
    db, replicas = open_store(cfg)
    split_revisions = SplitRevisions(db)
    health = HealthRunner(concurrency=cfg.health.max_in_flight, output_max_size=cfg.health.output_max_size)
    zones = ZonesSource(zones_dir, store, datacenter=cfg.datacenter, health_status=health.status_for("zones"),
                        poll_interval=cfg.zones_poll_interval, split_revisions=split_revisions,
                        on_publish=lambda checks: health.sync("zones", checks))
    republish = coalesced(zones.republish)
    health.register_owner("zones", on_change=lambda key, old, new: republish() if old.status is not new.status
                          else None)
    # views of the shared records, filled by the store's first full read (before DNS listens: a restart never
    # answers without the registrations) and kept current by its watch
    regs = Registrations(store, db, health, agent_node=agent_node(cfg), replicas=replicas)
    config = ConfigEntries(store, db)
    intentions = IntentionEntries(store, db)
    queries = PreparedQueries(store, db)
    components = [
        Component("store", start=lambda: start_store(db, cfg), close=lambda: close_store(db, replicas)),
        Component("health", run=health.run, close=health.close),
        Component("registrations", close=regs.close, readiness=regs.status),
        Component("config", readiness=config.status),
        # not ready while a zone file has never loaded (there is nothing previous to serve in its place)
        Component("zones", start=_now(zones.reload), run=zones.run, reload=lambda: zones.reload(force=True),
                  readiness=lambda: SourceStatus(synced=zones.ready, errors=dict(zones.errors))),
        # nothing answered yet: the index starts at the store's revision, as on every replica
        Component("index", start=_now(lambda: store.rebase(db.revision))),
    ]
    kubernetes, reverse_syncs = _kubernetes(cfg, store, split_revisions, components, replicas)
    peers = tuple(PeerSource(peer, store, coalesce=coalesced) for peer in cfg.peers)
    components += [Component(p.name, run=p.run, close=p.close, readiness=p.readiness) for p in peers]
    # the splits read at start are served before we say ready
    components.append(Component("splits", start=split_revisions.settled))
    workers = WorkerPool(cfg, store, count=cfg.dns.workers - 1) if cfg.dns.workers > 1 else None
    handler, forwarder = make_handler(cfg, store, workers=workers)
    if forwarder is not None:
        components.append(Component("forwarding", close=forwarder.close))
    if handler.topology is not None:
        components.append(Component("topology", run=handler.topology.run))
    dns = make_server(cfg, handler)

    async def listen() -> None:
        await dns.start(*cfg.dns.listen, reuse_port=workers is not None)
        log.info("dns listening on %s:%d (udp+tcp), domain %s, datacenter %s",
                 cfg.dns.listen[0], dns.port, cfg.domain, cfg.datacenter)

    components.append(Component("dns", start=listen, close=lambda: dns.close(drain=cfg.dns.drain_timeout)))
    api = HttpApi(ApiContext(cfg=cfg, store=store, registrations=regs, runner=health, handler=handler,
                             acl=Acl(cfg.acl_tokens, anonymous_read=cfg.http.anonymous_read),
                             watch=Watch(limit=cfg.http.max_blocking_queries), readiness=readiness(components),
                             config=config, intentions=intentions, queries=queries, kubernetes=list(kubernetes),
                             peers=list(peers), records=db, replicas=replicas))
    components.append(Component("http", start=api.start, close=api.close))

    async def join() -> None:  # the others (and /v1/status/*) reach this replica at its API's address
        replicas.address = advertised(cfg, api.port)

    components.append(Component("replicas", start=join, run=replicas.run))
    if workers is not None:  # last: the workers share the port the primary has bound; they stop first
        components.append(Component("workers", start=lambda: workers.start(dns.port), run=workers.run,
                                    close=workers.close))
    return App(cfg=cfg, store=store, db=db, replicas=replicas, health=health, zones=zones, registrations=regs,
               handler=handler,
               dns=dns, api=api, components=tuple(components), kubernetes=kubernetes,
               reverse_syncs=reverse_syncs, peers=peers, workers=workers)


def _now(fn: Callable[[], object]) -> Callable[[], "asyncio.Future[None]"]:
    """A synchronous start step as the awaitable the lifecycle expects."""
    async def step() -> None:
        fn()
    return step


def advertised(cfg: Config, http_port: int) -> str:
    """host:port the other replicas (and /v1/status/*) give for this replica's API."""
    if cfg.store.advertise:
        return cfg.store.advertise
    host = cfg.http.listen[0]
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{http_port}" if ":" in host else f"{host}:{http_port}"


async def close_store(records: Records, replicas) -> None:
    """Store what is queued (while still a member, so fenced writes hold), leave, close."""
    try:
        await asyncio.wait_for(records.flush(), 2.0)
    except asyncio.TimeoutError:
        log.warning("%s: queued writes not stored at shutdown", records)
    await replicas.close()
    await records.close()


def _kubernetes(cfg: Config, store: Store, split_revisions: SplitRevisions,
                components: list[Component], replicas) -> tuple[tuple, tuple]:
    """One source per [[kubernetes]] table (+ its reverse sync); imported only when configured."""
    if not cfg.kubernetes:
        return (), ()
    from .sources.kubernetes import KubernetesSource
    from .sources.kubernetes.reverse import ReverseSync

    sources, reverse_syncs = [], []
    for kc in cfg.kubernetes:
        source = KubernetesSource(kc, store, default_datacenter=cfg.datacenter, split_revisions=split_revisions)
        sources.append(source)
        components.append(Component(f"kubernetes/{kc.name}", run=source.run, close=source.close,
                                    readiness=source.readiness))
        if kc.sync_to_kubernetes != "off":  # a cluster-wide duty: only the leader writes
            reverse = ReverseSync(source, store, domain=cfg.domain, local_datacenter=cfg.datacenter,
                                  only_passing=cfg.dns.only_passing, leader=lambda: replicas.is_leader)
            replicas.on_leader(reverse.wake)
            reverse_syncs.append(reverse)
            components.append(Component(f"kubernetes/{kc.name}/sync", run=reverse.run, close=reverse.close))
    return tuple(sources), tuple(reverse_syncs)


def raise_open_files_limit() -> None:
    """Each imported service holds one blocking query (one connection) open to its peer: thousands of
    services need more than the usual soft limit of 1024 descriptors, so take what the hard limit allows.
    Process-wide, so only `meshdns serve` calls it (when it has peers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20  # Linux's default fs.nr_open
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d: %s", soft, exc)


def settle_gc() -> None:
    """Move everything built at start-up out of the collector's sight, and collect less often.

    The catalog, the Kubernetes client and the web stack are hundreds of thousands of
    long-lived objects; a full collection walking them stalls every answer for tens of
    milliseconds. Frozen objects are never scanned; new garbage is still collected.
    Process-wide, so only `meshdns serve` calls it, once it is ready.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 20_000), gen1, gen2)


def coalesced(fn: Callable[[], None]) -> Callable[[], None]:
    """A trigger that runs fn once on the next loop turn, however often it fires before that."""
    scheduled = False

    def run() -> None:
        nonlocal scheduled
        scheduled = False
        fn()

    def trigger() -> None:
        nonlocal scheduled
        if not scheduled:
            scheduled = True
            asyncio.get_running_loop().call_soon(run)
    return trigger


async def run(app: App, *, on_ready: Callable[[App], None] | None = None, signals: bool = True) -> None:
    """Serve until app.stop is set (SIGTERM, SIGINT) or a component's task dies (ComponentFailed)."""
    loop = asyncio.get_running_loop()
    if signals:
        loop.add_signal_handler(signal.SIGHUP, app.reload)
        loop.add_signal_handler(signal.SIGTERM, app.stop.set)
        loop.add_signal_handler(signal.SIGINT, app.stop.set)
    try:
        await serve_components(app.components, stop=app.stop,
                               on_started=(lambda: on_ready(app)) if on_ready is not None else None)
    finally:
        if signals:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("stopped")
