"""One Kubernetes cluster as a catalog source.

Three watch threads (Services, EndpointSlices, Nodes) feed raw objects to the
event loop; each event marks the Services it touches, and one flush per loop
turn re-maps just those and publishes them (`changed=`), so a pod flapping in
one Service never rebuilds another. Nodes are published as catalog nodes
(their InternalIP, their zone label as meta `zone`), which also gives the
pods on them a zone. Nothing is published before every kind
has been listed once, and nothing is withdrawn when the API server goes
away: the last synced state keeps being served (stale beats empty).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from ...catalog.model import Instance, Node, NodeKey, ServiceKey, SourceState, Split
from ...catalog.store import Store
from ...catalog.validate import FieldError, split_loops
from ...config import KubernetesConfig
from ..split_revisions import SplitRevisions
from ..status import SourceStatus
from .mapping import ClusterSettings, Mapped, catalog_node, map_service, node_view, object_key, slice_service
from .watch import ENDPOINTSLICES, NODES, SERVICES, Backoff, Timeouts, Watcher

log = logging.getLogger("meshdns.sources.kubernetes")

ObjKey = tuple[str, str]  # (namespace, name)
KINDS = (SERVICES, ENDPOINTSLICES, NODES)


class KubernetesSource:
    def __init__(self, cluster: KubernetesConfig, store: Store, *, default_datacenter: str,
                 api_client: Any = None, api_client_factory: Callable[[KubernetesConfig], Any] | None = None,
                 split_revisions: SplitRevisions | None = None):
        self.cluster = cluster
        self.split_revisions = split_revisions  # None: annotation splits carry no revision
        self.settings = ClusterSettings.from_config(cluster, default_datacenter=default_datacenter)
        self.name = self.settings.source
        self.store = store
        if api_client is None:
            from .client import api_client as default_factory
            api_client = (api_client_factory or default_factory)(cluster)
        self.api_client = api_client
        # raw objects, as the API server last told us
        self.services: dict[ObjKey, dict] = {}
        self.slices: dict[ObjKey, dict] = {}
        self.nodes: dict[str, dict] = {}
        self._slices_of: dict[ObjKey, set[ObjKey]] = {}
        self._slice_owner: dict[ObjKey, ObjKey] = {}
        self._node_views: dict[str, Any] = {}
        self._catalog_nodes: dict[NodeKey, Node] = {}
        self._published_nodes: dict[NodeKey, Node] = {}   # replaced, never mutated: the store diffs by identity
        # what they map to
        self.mapped: dict[ObjKey, Mapped] = {}
        self._by_catalog: dict[ServiceKey, set[ObjKey]] = {}
        self._node_users: set[ObjKey] = set()
        self._catalog: dict[ServiceKey, tuple[Instance, ...]] = {}
        self._splits: dict[str, Split] = {}
        self.problems: dict[str, str] = {}   # "ns/name" -> why that Service is not (freshly) mapped
        self._split_problems: dict[str, str] = {}
        # pending work
        self._dirty: set[ObjKey] = set()
        self._nodes_dirty = False
        self._catalog_nodes_dirty = False
        self._oldest_pending: float | None = None
        self._flush_scheduled = False
        self._published = False
        # status, read by /readyz and /metrics
        self.synced = False
        self._ready = False   # synced, and the splits read then have their revisions
        self.listed_kinds: set[str] = set()
        self.watching: dict[str, bool] = {r.kind: False for r in KINDS}
        self.events = 0
        self.bookmarks = 0
        self.relists = 0
        self.errors = 0
        self.last_error = ""
        self.last_event: float | None = None      # monotonic time of the last list/event/bookmark
        self.lag = 0.0                            # seconds from receipt to publish, last flush
        self.max_lag = 0.0
        self.synced_event = asyncio.Event()
        # threads
        self._stop = threading.Event()
        self._watchers: list[Watcher] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._failing: dict[str, str] = {}

    # -- status ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return all(self.watching.values())

    @property
    def last_event_age(self) -> float | None:
        return None if self.last_event is None else max(0.0, time.monotonic() - self.last_event)

    def status(self) -> dict:
        age = self.last_event_age
        return {"name": self.cluster.name, "source": self.name, "datacenter": self.settings.datacenter,
                "synced": self.synced, "connected": self.connected,
                "last_event_age": None if age is None else round(age, 3),
                "events": self.events, "bookmarks": self.bookmarks, "relists": self.relists,
                "errors": self.errors, "last_error": self.last_error,
                "lag_seconds": round(self.lag, 6), "max_lag_seconds": round(self.max_lag, 6),
                "services": len(self._catalog), "nodes": len(self._catalog_nodes), "problems": {**self.problems, **self._split_problems}}

    def readiness(self) -> SourceStatus:
        """For /readyz: synced once (and its splits' revisions recorded) is ready; a lost connection is
        reported, not made fatal (stale beats empty)."""
        errors = {**self.problems, **self._split_problems}
        if not self.connected and self.last_error:
            errors["api"] = self.last_error
        age = self.last_event_age
        if self.synced and not self._ready:   # the first time only: a later annotation never unreadies us
            # recorded and served: a recorded split is published by the remap it schedules
            self._ready = (self.split_revisions is None or not self.split_revisions.pending(self.name)) \
                and not self._dirty
        return SourceStatus(synced=self._ready, errors=errors,
                            details={"connected": self.connected,
                                     "last_event_age": None if age is None else round(age, 3)})

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Start the watch threads and keep them until close() (which the lifecycle calls, once)."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        kc = self.cluster
        timeouts = Timeouts(watch=kc.watch_timeout, request=kc.request_timeout, idle=kc.watch_idle_timeout)
        post = self._loop.call_soon_threadsafe
        for resource in KINDS:
            w = Watcher(resource, self.api_client, sink=self, post=post, timeouts=timeouts,
                        backoff=Backoff(initial=kc.backoff, cap=kc.max_backoff), stop=self._stop,
                        label=kc.name)
            self._watchers.append(w)
            w.start()
        log.info("kubernetes cluster %s: watching services, endpointslices, nodes (datacenter %s)",
                 kc.name, self.settings.datacenter)
        await self._stopped.wait()

    async def close(self) -> None:
        """Stop the threads: set the flag, cut blocked reads, wait (bounded) for them to end."""
        if self._stopped is not None:
            self._stopped.set()
        if self._stop.is_set():
            return
        self._stop.set()
        for w in self._watchers:
            w.interrupt()
        deadline = time.monotonic() + self.cluster.request_timeout + 1.0
        while any(not w.join(0) for w in self._watchers) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.api_client.close()

    # -- sink: called on the loop by the watch threads --------------------------------

    def listed(self, kind: str, items: list[dict], received: float) -> None:
        if kind in self.listed_kinds:
            self.relists += 1
        fresh = {self._key(kind, obj): obj for obj in items}
        current = self._objects(kind)
        for key in set(current) - set(fresh):
            self._remove(kind, key)
        for key, obj in fresh.items():
            old = current.get(key)
            if old is None or _rv(old) != _rv(obj) or not _rv(obj):
                self._put(kind, key, obj)
        self.listed_kinds.add(kind)
        self._touch(received)
        if not self.synced and len(self.listed_kinds) == len(KINDS):
            self.synced = True
            log.info("kubernetes cluster %s synced: %d services, %d endpointslices, %d nodes",
                     self.cluster.name, len(self.services), len(self.slices), len(self.nodes))
        self._schedule(received)

    def event(self, kind: str, etype: str, obj: dict, received: float) -> None:
        self.events += 1
        key = self._key(kind, obj)
        if etype == "DELETED":
            self._remove(kind, key)
        else:
            self._put(kind, key, obj)
        self._touch(received)
        self._schedule(received)

    def bookmark(self, kind: str, received: float) -> None:
        self.bookmarks += 1
        self._touch(received)

    def watch_started(self, kind: str) -> None:
        self.watching[kind] = True
        if self._failing.pop(kind, None) is not None:
            log.info("kubernetes cluster %s: %s watch reconnected", self.cluster.name, kind)

    def failed(self, kind: str, message: str, *, gone: bool) -> None:
        self.watching[kind] = False
        if gone:
            log.info("kubernetes cluster %s: %s: %s", self.cluster.name, kind, message)
            return
        self.errors += 1
        self.last_error = f"{kind}: {message}"
        if self._failing.get(kind) != message:
            log.warning("kubernetes cluster %s: %s list/watch failed (serving the last synced state): %s",
                        self.cluster.name, kind, message)
        self._failing[kind] = message

    # -- raw object bookkeeping ---------------------------------------------------

    @staticmethod
    def _key(kind: str, obj: dict) -> Any:
        ns, name = object_key(obj)
        return name if kind == "nodes" else (ns, name)

    def _objects(self, kind: str) -> dict:
        return {"services": self.services, "endpointslices": self.slices, "nodes": self.nodes}[kind]

    def _put(self, kind: str, key: Any, obj: dict) -> None:
        if kind == "services":
            self.services[key] = obj
            self._dirty.add(key)
        elif kind == "endpointslices":
            self._unlink_slice(key)
            self.slices[key] = obj
            owner = slice_service(obj)
            if owner is not None:
                self._slice_owner[key] = owner
                self._slices_of.setdefault(owner, set()).add(key)
                self._dirty.add(owner)
        else:
            self.nodes[key] = obj
            self._node_changed(key, obj)

    def _remove(self, kind: str, key: Any) -> None:
        if kind == "services":
            if self.services.pop(key, None) is not None:
                self._dirty.add(key)
        elif kind == "endpointslices":
            self._unlink_slice(key)
            self.slices.pop(key, None)
        else:
            self.nodes.pop(key, None)
            self._node_changed(key, None)

    def _unlink_slice(self, key: ObjKey) -> None:
        owner = self._slice_owner.pop(key, None)
        if owner is not None:
            keys = self._slices_of.get(owner)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._slices_of[owner]
            self._dirty.add(owner)

    def _node_changed(self, name: str, obj: dict | None) -> None:
        key = (self.settings.datacenter, name.lower())
        node = catalog_node(obj, self.settings) if obj is not None else None
        if self._catalog_nodes.get(key) != node:
            if node is None:
                self._catalog_nodes.pop(key, None)
            else:
                self._catalog_nodes[key] = node
            self._catalog_nodes_dirty = True
        view = node_view(obj, self.settings.nodeport_address)
        if self._node_views.get(name) != view:
            if view is None:
                self._node_views.pop(name, None)
            else:
                self._node_views[name] = view
            self._nodes_dirty = True

    def _touch(self, received: float) -> None:
        self.last_event = max(received, self.last_event or 0.0)

    # -- mapping and publishing ------------------------------------------------------

    def _schedule(self, received: float) -> None:
        if self._oldest_pending is None:
            self._oldest_pending = received
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Re-map the Services touched since the last flush and publish them in one snapshot."""
        self._flush_scheduled = False
        if not self.synced:
            return
        dirty = self._dirty
        self._dirty = set()
        if self._nodes_dirty:
            dirty |= self._node_users
            self._nodes_dirty = False
        if not self._published:
            dirty |= set(self.services) | set(self.mapped)
        changed: set[ServiceKey] = set()
        splits_changed = False
        for key in dirty:
            old = self.mapped.get(key)
            new = self._map(key, old)
            if new == old:
                continue
            if old is not None:
                self._by_catalog[old.key].discard(key)
                if not self._by_catalog[old.key]:
                    del self._by_catalog[old.key]
                changed.add(old.key)
            if new is None:
                self.mapped.pop(key, None)
                self._node_users.discard(key)
            else:
                self.mapped[key] = new
                self._by_catalog.setdefault(new.key, set()).add(key)
                (self._node_users.add if new.uses_nodes else self._node_users.discard)(key)
                changed.add(new.key)
            splits_changed = splits_changed or (old and old.split) != (new and new.split)
        for ck in changed:
            insts: tuple[Instance, ...] = ()
            for key in sorted(self._by_catalog.get(ck, ())):
                insts += self.mapped[key].instances
            if insts:
                self._catalog[ck] = insts
            else:
                self._catalog.pop(ck, None)
        if splits_changed:
            self._splits = self._collect_splits()
        nodes_changed = self._catalog_nodes_dirty
        if nodes_changed:
            self._published_nodes = dict(self._catalog_nodes)
            self._catalog_nodes_dirty = False
        if changed or nodes_changed or not self._published:
            self.store.publish(self.name, SourceState(services=dict(self._catalog), splits=dict(self._splits),
                                                      nodes=self._published_nodes), changed=changed)
            self._published = True
        if self._oldest_pending is not None:
            self.lag = max(0.0, time.monotonic() - self._oldest_pending)
            self.max_lag = max(self.max_lag, self.lag)
            self._oldest_pending = None
        if not self.synced_event.is_set():
            self.synced_event.set()

    def _map(self, key: ObjKey, old: Mapped | None) -> Mapped | None:
        svc = self.services.get(key)
        label = "/".join(key)
        if svc is None:
            self.problems.pop(label, None)
            if self.split_revisions is not None:
                self.split_revisions.forget(self.name, label)
            return None
        slices = [self.slices[k] for k in sorted(self._slices_of.get(key, ()))]
        try:
            new = map_service(svc, slices, self.nodes, self.settings)
        except FieldError as exc:
            message = f"Service {label}: {exc}"
            if self.problems.get(label) != message:
                log.error("kubernetes cluster %s: %s (previous mapping kept)", self.cluster.name, message)
            self.problems[label] = message
            return old
        if self.problems.pop(label, None) is not None:
            log.info("kubernetes cluster %s: Service %s is mapped again", self.cluster.name, label)
        if self.split_revisions is not None:
            if new is not None and new.split is not None:
                # the store revision of the write that gave the annotation this content (last write wins);
                # while a new content is being recorded, the previous one stays
                new = replace(new, split=self.split_revisions.stamp(self.name, label, new.split,
                                                                    on_ready=lambda: self._remap(key)))
            else:
                self.split_revisions.forget(self.name, label)
        return new

    def _remap(self, key: ObjKey) -> None:
        self._dirty.add(key)
        self._schedule(time.monotonic())

    def _collect_splits(self) -> dict[str, Split]:
        """The newest split per name among this cluster's Services; a split that targets a split is dropped."""
        splits: dict[str, Split] = {}
        owners: dict[str, ObjKey] = {}
        for key in sorted(self.mapped):
            s = self.mapped[key].split
            if s is not None and (s.name not in splits or s.revision > splits[s.name].revision):
                splits[s.name] = s
                owners[s.name] = key
        self._split_problems = {}
        while (loop := split_loops(splits)) is not None:
            name = loop.split("'")[1]
            splits.pop(name, None)
            label = "/".join(owners[name])
            self._split_problems[label] = f"Service {label}: {loop}; split ignored"
            log.error("kubernetes cluster %s: Service %s: %s; split ignored", self.cluster.name, label, loop)
        return splits


def _rv(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
