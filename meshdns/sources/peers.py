"""Another datacenter's catalog, imported through its Consul-shaped HTTP API (a meshdns or a Consul agent).

One blocking query follows `/v1/catalog/services`; one more follows
`/v1/health/service/<name>` for each service the `services` globs match. The
answers become instances and nodes of the peer's datacenter, published as the
source `peer/<dc>`, so they are served as `<svc>.service.<dc>.consul` and read
with `?dc=<dc>`. Nothing is published before every matched service has been
read once (one publish for a first sync of thousands), and nothing is
withdrawn when the peer goes away: the last state stays served and is
reported stale until the watches succeed again.
"""
from __future__ import annotations

import asyncio
import fnmatch
import logging
import random
import time
import urllib.parse
from typing import Any, Callable

from ..catalog import validate
from ..catalog.model import Health, Instance, Node, NodeKey, ServiceKey, SourceState
from ..catalog.store import Store
from ..catalog.validate import FieldError
from ..config import PeerConfig
from ..health.spec import get_field
from .backoff import Backoff
from .consul_watch import BlockingLoop, ConsulClient, PeerError
from .status import SourceStatus

log = logging.getLogger("meshdns.sources.peers")

MAINTENANCE_CHECKS = ("_node_maintenance",)
SERVICE_MAINTENANCE = "_service_maintenance:"


def _check_health(check: Any) -> Health:
    if not isinstance(check, dict):
        return Health.CRITICAL
    check_id = str(get_field(check, "CheckID") or "")
    if check_id in MAINTENANCE_CHECKS or check_id.startswith(SERVICE_MAINTENANCE):
        return Health.MAINTENANCE
    try:
        return Health.parse(str(get_field(check, "Status") or ""))
    except ValueError:
        return Health.CRITICAL


def map_entry(entry: Any, *, datacenter: str, source: str) -> tuple[Instance, Node | None]:
    """One /v1/health/service entry -> (instance, its node); the worst check is the instance's health.

    A meshdns peer lists address-only instances (zone files, pods) with an empty node: they keep
    their own address and bring no node."""
    if not isinstance(entry, dict):
        raise FieldError("entry", "expected an object")
    node, svc = get_field(entry, "Node"), get_field(entry, "Service")
    if not isinstance(node, dict) or not isinstance(svc, dict):
        raise FieldError("entry", "expected Node and Service objects")
    node_name = get_field(node, "Node") or ""
    if node_name:
        validate.node_name(node_name, "Node.Node")
    node_address = validate.address(get_field(node, "Address"), "Node.Address")
    checks = get_field(entry, "Checks") or []
    if not isinstance(checks, list):
        raise FieldError("Checks", "expected a list")
    weights = get_field(svc, "Weights")
    name = get_field(svc, "Service")
    if not isinstance(name, str) or not name:
        raise FieldError("Service.Service", "required")
    sid = get_field(svc, "ID") or name
    inst = Instance(
        id=str(sid), service=name, datacenter=datacenter,
        address=validate.address(get_field(svc, "Address"), "Service.Address") or ("" if node_name else node_address),
        port=validate.port(get_field(svc, "Port") or 0, "Service.Port"),
        node=node_name, tags=validate.tags(get_field(svc, "Tags"), "Service.Tags"),
        meta=validate.meta(get_field(svc, "Meta"), "Service.Meta"),
        weights=validate.weights({k.lower(): v for k, v in weights.items()} if isinstance(weights, dict) else None,
                                 "Service.Weights"),
        health=max((_check_health(c) for c in checks), default=Health.PASSING), source=source)
    if not node_name:
        return inst, None
    return inst, Node(name=node_name, address=node_address, datacenter=datacenter,
                      meta=validate.meta(get_field(node, "Meta"), "Node.Meta"), source=source)


class PeerSource:
    def __init__(self, peer: PeerConfig, store: Store, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 coalesce: Callable[[Callable[[], None]], Callable[[], None]] = lambda fn: fn):
        self.peer = peer
        self.store = store
        self.name = f"peer/{peer.datacenter}"
        self.rng = rng or random.Random()
        self.clock = clock
        self.services: dict[str, tuple[Instance, ...]] = {}        # lower-case name -> instances
        self.nodes_of: dict[str, dict[NodeKey, Node]] = {}
        self.watches: dict[str, asyncio.Task] = {}
        self.listed = False              # /v1/catalog/services answered once
        self.unread: set[str] = set()    # matched services not read successfully yet
        self.unattempted: set[str] = set()  # matched services whose first read has not finished
        self.failing: dict[str, str] = {}   # endpoint -> its last error, while it fails
        self.errors = 0
        self.published = False
        self.problems: dict[str, str] = {}  # entries skipped, by service
        self._stale_since: float | None = None
        self._dirty: set[ServiceKey] = set()
        self._publish_soon = coalesce(self._publish)
        self._client: ConsulClient | None = None
        self._gate: asyncio.Semaphore | None = None
        self._stopped = asyncio.Event()

    # -- what /readyz and /metrics show -------------------------------------------

    @property
    def synced(self) -> bool:
        return self.listed and not self.unread

    @property
    def connected(self) -> bool:
        return self.listed and not self.failing

    def sync_age(self) -> float | None:
        """Seconds since the imported copy was last known current: 0 while every watch is healthy,
        None before the first sync."""
        if not self.published:
            return None
        if self._stale_since is None:
            return 0.0
        return max(0.0, self.clock() - self._stale_since)

    def readiness(self) -> SourceStatus:
        """A peer that is down does not make this server unready (another site's outage must not take
        this site's DNS away); it is reported as not synced, or as stale with the age of its copy."""
        age = self.sync_age()
        errors = dict(self.problems)
        if self.failing:
            errors["peer"] = next(reversed(self.failing.values()))
        return SourceStatus(synced=self.synced, errors=errors, required=False, details={
            "datacenter": self.peer.datacenter, "url": self.peer.url, "connected": self.connected,
            "stale": self.published and bool(self.failing), "failing_watches": len(self.failing),
            "sync_age_seconds": None if age is None else round(age, 3),
            "services": len(self.services), "instances": sum(map(len, self.services.values()))})

    # -- lifecycle ----------------------------------------------------------------

    async def run(self) -> None:
        p = self.peer
        self._client = ConsulClient(p.url, datacenter=p.datacenter, token=p.token, timeout=p.timeout)
        self._gate = asyncio.Semaphore(p.sync_concurrency)
        log.info("peer %s: importing %s from %s", p.datacenter, ", ".join(p.services), p.url)
        catalog = asyncio.create_task(self._loop("/v1/catalog/services", "catalog", self._listed).run())
        try:
            await self._stopped.wait()
        finally:
            catalog.cancel()   # the watches and the client are close()'s, which the lifecycle calls once

    async def close(self) -> None:
        """Stop every watch; the imported state stays published (the process is stopping anyway)."""
        self._stopped.set()
        for task in self.watches.values():
            task.cancel()
        self.watches.clear()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _loop(self, path: str, key: str, on_answer: Callable[[Any], None]) -> BlockingLoop:
        p = self.peer
        return BlockingLoop(self._client, path, wait=p.wait, rng=self.rng, gate=self._gate,
                            backoff=Backoff(initial=p.backoff, cap=p.max_backoff, rng=self.rng),
                            on_answer=lambda body: self._answered(key, on_answer, body),
                            on_error=lambda message: self._failed(key, message))

    def _answered(self, key: str, on_answer: Callable[[Any], None], body: Any) -> None:
        on_answer(body)
        if self.failing.pop(key, None) is not None and not self.failing:
            self._stale_since = None
            log.info("peer %s: reachable again, import is current", self.peer.datacenter)

    def _failed(self, key: str, message: str) -> None:
        self.errors += 1
        if not self.failing:
            self._stale_since = self.clock()
            log.warning("peer %s: %s (keeping its last imported state)", self.peer.datacenter, message)
        else:
            log.debug("peer %s: %s", self.peer.datacenter, message)
        self.failing[key] = message
        if key.startswith("service:") and key[8:] in self.unattempted:
            self.unattempted.discard(key[8:])
            self._publish_soon()

    # -- answers ------------------------------------------------------------------

    def matches(self, name: str) -> bool:
        lower = name.lower()
        return any(fnmatch.fnmatchcase(lower, glob) for glob in self.peer.services)

    def _listed(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise PeerError(f"GET {self.peer.url}/v1/catalog/services: expected an object of service names")
        wanted = {str(n).lower(): str(n) for n in body if self.matches(str(n))}
        for gone in [n for n in self.watches if n not in wanted]:
            self.watches.pop(gone).cancel()
            self.services.pop(gone, None)
            self.nodes_of.pop(gone, None)
            self.problems.pop(gone, None)
            self.failing.pop(f"service:{gone}", None)
            self.unread.discard(gone)
            self.unattempted.discard(gone)
            self._dirty.add((self.peer.datacenter, gone))
        if not self.failing:
            self._stale_since = None
        for lower, name in wanted.items():
            if lower not in self.watches:
                self.unread.add(lower)
                self.unattempted.add(lower)
                path = "/v1/health/service/" + urllib.parse.quote(name, safe="")
                loop = self._loop(path, f"service:{lower}", lambda body, n=lower: self._health(n, body))
                self.watches[lower] = asyncio.create_task(loop.run(), name=f"peer-{self.peer.datacenter}-{lower}")
        self.listed = True
        self._publish_soon()

    def _health(self, name: str, body: Any) -> None:
        if name not in self.watches:
            return  # dropped from the catalog while this answer was on its way
        if not isinstance(body, list):
            raise PeerError(f"GET {self.peer.url}/v1/health/service/{name}: expected a list of entries")
        instances, nodes, skipped = [], {}, []
        for i, entry in enumerate(body):
            try:
                inst, node = map_entry(entry, datacenter=self.peer.datacenter, source=self.name)
            except FieldError as exc:
                skipped.append(f"entry {i}: {exc}")
                continue
            instances.append(inst)
            if node is not None:
                nodes[(node.datacenter, node.name.lower())] = node
        if skipped:
            self.problems[name] = f"{len(skipped)} entries skipped, first: {skipped[0]}"
        else:
            self.problems.pop(name, None)
        new = tuple(instances)
        if new != self.services.get(name) or nodes != self.nodes_of.get(name):
            self.services[name] = new
            self.nodes_of[name] = nodes
            self._dirty.add((self.peer.datacenter, name))
        self.unread.discard(name)
        self.unattempted.discard(name)
        self._publish_soon()

    def _publish(self) -> None:
        """Everything imported so far, once every matched service has had its first read."""
        if not self.listed or self.unattempted or (self.published and not self._dirty):
            return
        dc = self.peer.datacenter
        nodes: dict[NodeKey, Node] = {}
        for part in self.nodes_of.values():
            nodes.update(part)
        state = SourceState(services={(dc, n): insts for n, insts in self.services.items() if insts}, nodes=nodes)
        changed, self._dirty = self._dirty, set()
        self.store.publish(self.name, state, changed=changed)
        if not self.published:
            log.info("peer %s: first sync, %d services", dc, len(self.services))
        self.published = True
