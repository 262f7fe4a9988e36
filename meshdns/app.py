"""Wiring and lifecycle: one TaskGroup owns every long-running task; signals steer it."""
from __future__ import annotations

import asyncio
import gc
import logging
import random
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from .catalog.store import Store
from .config import Config, ConfigError, read_secret_files
from .catalog.client_class import parse_localities
from .dns.clients import Classifier, Views
from .dns.handler import DnsHandler, RecursionPolicy
from .dns.resolver import ResolverOptions
from .dns.rrl import RateLimiter
from .dns.server import DnsServer
from .dns.topology import TopologyCounter
from .forward.forwarder import from_config as forwarder_from_config
from .sources.zones import ZonesSource
from .workers import WorkerPool
from .api.acl import Acl, check_exposure
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
from .sources.sqlite_store import RecordStore
from .sources.status import SourceStatus

log = logging.getLogger("meshdns")


def resolver_options(cfg: Config) -> ResolverOptions:
    host = cfg.dns.listen[0]
    ns = () if host in ("0.0.0.0", "::", "") else (host,)
    return ResolverOptions(domains=cfg.domains, only_passing=cfg.dns.only_passing,
                           a_record_limit=cfg.dns.a_record_limit, node_ttl=int(cfg.dns.node_ttl),
                           service_ttl=cfg.dns.service_ttl, soa=cfg.dns.soa, ns_addresses=ns,
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
    """The running server. Built by `build`, run by `run` until `stop` is set."""

    cfg: Config
    store: Store
    zones: ZonesSource
    handler: DnsHandler
    dns: DnsServer
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reloaders: list[Callable[[], None]] = field(default_factory=list)
    tasks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    http_port: int = 0
    workers: "WorkerPool | None" = None
    kubernetes: list = field(default_factory=list)       # KubernetesSource per cluster (status())
    reverse_syncs: list = field(default_factory=list)    # ReverseSync per cluster that has it (status())
    peers: list = field(default_factory=list)            # PeerSource per [[peer]] (other datacenters)
    health: HealthRunner | None = None
    registrations: Registrations | None = None
    api: HttpApi | None = None
    db: RecordStore | None = None  # durable (kind, key) -> JSON records; e.g. config entries can use it too
    split_revisions: SplitRevisions | None = None
    starters: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # awaited before on_ready
    readiness: dict[str, Callable[[], SourceStatus]] = field(default_factory=dict)  # /readyz, per source

    @property
    def dns_port(self) -> int:
        return self.dns.port

    def reload(self) -> None:
        log.info("reload requested")
        for reload in self.reloaders:
            try:
                reload()
            except Exception:
                log.exception("reload failed; previous state kept")


def make_handler(cfg: Config, store: Store):
    """The DNS handler (and its forwarder, if any) over a store; the primary and workers share this."""
    forwarder = forwarder_from_config(cfg)
    rrl = None
    if cfg.dns.rrl_responses_per_second:
        rrl = RateLimiter(rate=cfg.dns.rrl_responses_per_second, exempt=cfg.dns.rrl_exempt, clock=time.monotonic)
    rng = random.Random(cfg.dns.rng_seed) if cfg.dns.rng_seed is not None else None
    topology = None
    if cfg.ui.topology:
        topology = TopologyCounter(clock=time.monotonic, max_keys=cfg.ui.topology_max_keys,
                                   keep_minutes=int(cfg.ui.topology_window // 60))
    handler = DnsHandler(store, resolver_options(cfg), udp_payload=cfg.dns.udp_payload,
                         enable_truncate=cfg.dns.enable_truncate, forwarder=forwarder, rng=rng,
                         classifier=classifier(cfg), rate_limiter=rrl,
                         topology=topology)
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
    cfg = read_secret_files(cfg)
    check_exposure(cfg)
    zones_dir = zones_directory(cfg)
    store = Store(datacenter=cfg.datacenter)
    # the durable store comes first: its revision orders splits from every source and floors X-Consul-Index
    db = RecordStore(cfg.data_dir, on_commit=store.advance)
    store.advance(db.revision)
    split_revisions = SplitRevisions(db)
    health = HealthRunner()
    zones = ZonesSource(zones_dir, store, datacenter=cfg.datacenter, health_status=health.status_for("zones"),
                        split_revisions=split_revisions)
    handler, forwarder = make_handler(cfg, store)
    dns = make_server(cfg, handler)
    app = App(cfg=cfg, store=store, zones=zones, handler=handler, dns=dns, db=db, split_revisions=split_revisions)
    app.starters.append(split_revisions.settled)   # the splits read at start are served before we say ready
    app.reloaders.append(lambda: zones.reload(force=True))
    app.tasks.append(zones.run)
    if handler.topology is not None:
        app.tasks.append(handler.topology.run)
    if forwarder is not None:
        app.closers.append(forwarder.close)
    if cfg.kubernetes:
        _add_kubernetes(app)
    _add_registrations(app, health)
    _add_peers(app)
    return app


def _add_peers(app: App) -> None:
    """One import per [[peer]]; the API shows their state (readiness, metrics, datacenters)."""
    if app.cfg.peers:
        _raise_open_files_limit()
    for peer in app.cfg.peers:
        source = PeerSource(peer, app.store, coalesce=coalesced)
        app.peers.append(source)
        app.readiness[source.name] = source.readiness
        app.tasks.append(source.run)
        app.closers.append(source.close)
    app.api.ctx.peers = app.peers


def _add_kubernetes(app: App) -> None:
    """One source per [[kubernetes]] table (+ its reverse sync); imported only when configured."""
    from .sources.kubernetes import KubernetesSource
    from .sources.kubernetes.reverse import ReverseSync

    cfg, store = app.cfg, app.store
    names = [kc.name for kc in cfg.kubernetes]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"kubernetes[{i}].name: {name!r} names two clusters (each needs its own name)")
    for kc in cfg.kubernetes:
        source = KubernetesSource(kc, store, default_datacenter=cfg.datacenter, split_revisions=app.split_revisions)
        app.kubernetes.append(source)
        app.readiness[f"kubernetes/{kc.name}"] = source.readiness
        app.tasks.append(source.run)
        app.closers.append(source.close)
        if kc.sync_to_kubernetes != "off":
            reverse = ReverseSync(source, store, domain=cfg.domain, local_datacenter=cfg.datacenter,
                                  only_passing=cfg.dns.only_passing)
            app.reverse_syncs.append(reverse)
            app.tasks.append(reverse.run)
            app.closers.append(reverse.close)


def _add_registrations(app: App, health: HealthRunner) -> None:
    """VM registrations (durable), the one health-check runner, and the HTTP API."""
    cfg, zones = app.cfg, app.zones
    republish = coalesced(zones.republish)
    health.register_owner("zones", on_change=lambda key, old, new: republish() if old.status is not new.status
                          else None)
    zones.listeners.append(lambda: health.sync("zones", zones.checks()))
    regs = Registrations(app.store, app.db, health, agent_node=agent_node(cfg))
    config = ConfigEntries(app.store, app.db)
    intentions = IntentionEntries(app.store, app.db)
    queries = PreparedQueries(app.store, app.db)
    api = HttpApi(ApiContext(cfg=cfg, store=app.store, registrations=regs, runner=health, handler=app.handler,
                             acl=Acl(cfg.acl_tokens, anonymous_read=cfg.http.anonymous_read),
                             watch=Watch(limit=cfg.http.max_blocking_queries), readiness=app.readiness,
                             config=config, intentions=intentions, queries=queries))
    app.health, app.registrations, app.api = health, regs, api
    api.ctx.kubernetes = app.kubernetes
    # not ready while a zone file has never loaded (there is nothing previous to serve in its place)
    app.readiness["zones"] = lambda: SourceStatus(synced=zones.ready, errors=dict(zones.errors))
    app.readiness["registrations"] = regs.status

    regs.load()  # before DNS listens: a restart never answers without the registrations
    config.load()
    intentions.load()
    queries.load()
    app.readiness["config"] = config.status

    async def start() -> None:
        app.http_port = await api.start()

    app.starters.append(start)
    app.tasks.append(health.run)
    app.closers.extend([app.db.close, health.close, regs.close, api.close])


def _raise_open_files_limit() -> None:
    """Each imported service holds one blocking query (one connection) open to its peer: thousands of
    services need more than the usual soft limit of 1024 descriptors, so take what the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20  # Linux's default fs.nr_open
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d: %s", soft, exc)


def _settle_gc() -> None:
    """Move everything built at start-up out of the collector's sight, and collect less often.

    The catalog, the Kubernetes client and the web stack are hundreds of thousands of
    long-lived objects; a full collection walking them stalls every answer for tens of
    milliseconds. Frozen objects are never scanned; new garbage is still collected.
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
    cfg = app.cfg
    app.zones.reload()
    await app.dns.start(*cfg.dns.listen, reuse_port=cfg.dns.workers > 1)
    for start in app.starters:
        await start()
    if cfg.dns.workers > 1:
        app.workers = WorkerPool(cfg, app.store, port=app.dns.port, count=cfg.dns.workers - 1)
        app.tasks.append(app.workers.run)
        app.handler.peers = app.workers.stats
        if app.handler.topology is not None:
            app.handler.topology.peers = app.workers.topology
        if app.handler.forwarder is not None:
            app.handler.forwarder.peers = app.workers.forward_counts
        app.closers.append(app.workers.close)  # closers run in reverse: workers stop first
    loop = asyncio.get_running_loop()
    if signals:
        loop.add_signal_handler(signal.SIGHUP, app.reload)
        loop.add_signal_handler(signal.SIGTERM, app.stop.set)
        loop.add_signal_handler(signal.SIGINT, app.stop.set)
    try:
        async with asyncio.TaskGroup() as tg:
            running = [tg.create_task(t()) for t in app.tasks]
            log.info("dns listening on %s:%d (udp+tcp), domain %s, datacenter %s",
                     cfg.dns.listen[0], app.dns.port, cfg.domain, cfg.datacenter)
            _settle_gc()
            if on_ready is not None:
                on_ready(app)
            await app.stop.wait()
            log.info("stopping: draining in-flight queries")
            await app.dns.close()
            for close in reversed(app.closers):
                await close()
            for task in running:
                task.cancel()
    finally:
        if signals:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("stopped")
