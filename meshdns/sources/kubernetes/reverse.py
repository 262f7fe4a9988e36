"""Reverse sync: catalog services that do not come from a cluster appear in it as Services.

`externalname`: a Service of type ExternalName pointing at `<name>.service.<domain>`,
so pods resolve VM services through meshdns. `endpoints`: a selector-less
Service plus EndpointSlices holding the healthy VM addresses, kept in step
with health. Everything written carries `app.kubernetes.io/managed-by: meshdns`
and `meshdns.io/service-sync: "false"` (so the forward sync never maps it back);
the label is checked on the live object before every update or delete, so an
object meshdns did not create is never touched.

`desired_objects` is pure (snapshot in, manifests out); `ReverseSync` runs the
blocking API calls in one thread, woken by catalog changes.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from kubernetes import client
from kubernetes.client.rest import ApiException

from ...catalog.rules import healthy
from ...catalog.snapshot import Snapshot
from ...catalog.store import Store
from ...dns.names import ip_version
from .mapping import MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, managed_by_meshdns
from .watch import Backoff, _describe

log = logging.getLogger("meshdns.sources.kubernetes.reverse")

SYNC_ANNOTATION = "meshdns.io/service-sync"
ORIGIN_ANNOTATION = "meshdns.io/catalog-service"
SLICE_MANAGER_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "meshdns.io"
SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
MAX_ENDPOINTS = 1000  # per EndpointSlice (API limit)
_K8S_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Desired:
    service: dict
    slices: dict[str, dict] = field(default_factory=dict)


def _meta(name: str, namespace: str, origin: str, extra_labels: dict | None = None) -> dict:
    return {"name": name, "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, **(extra_labels or {})},
            "annotations": {SYNC_ANNOTATION: "false", ORIGIN_ANNOTATION: origin}}


def desired_objects(snapshot: Snapshot, *, source: str, datacenter: str, local_datacenter: str, domain: str,
                    mode: str, namespace: str, only_passing: bool) -> dict[str, Desired]:
    """Service name -> the objects that should exist for it in `namespace`.

    Candidates are the services of the cluster's datacenter and of meshdns's own
    (the cluster's wins a name clash); a service with any instance from this
    cluster comes from it and is left alone, as is a name Kubernetes cannot hold.
    """
    domain = domain.rstrip(".")
    chosen: dict[str, tuple[str, tuple]] = {}
    for dc in dict.fromkeys((datacenter, local_datacenter)):
        for (sdc, name), insts in snapshot.services.items():
            if sdc != dc or name in chosen or not _K8S_NAME.fullmatch(name):
                continue
            if any(i.source == source for i in insts):
                chosen[name] = ("", ())   # ours: occupies the name, never written
                continue
            chosen[name] = (dc, insts)
    out: dict[str, Desired] = {}
    for name, (dc, insts) in sorted(chosen.items()):
        if not dc:
            continue
        fqdn = f"{name}.service.{domain}" if dc == local_datacenter else f"{name}.service.{dc}.{domain}"
        if mode == "externalname":
            out[name] = Desired({"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace, fqdn),
                                 "spec": {"type": "ExternalName", "externalName": fqdn}})
            continue
        ports = Counter(i.port for i in insts if i.port)
        port = min(ports, key=lambda p: (-ports[p], p)) if ports else 0
        spec: dict[str, Any] = {"type": "ClusterIP"}
        if port:
            spec["ports"] = [{"port": port, "targetPort": port, "protocol": "TCP"}]
        else:
            spec["clusterIP"] = "None"  # no port to proxy: headless, DNS hands out the VM addresses
        groups: dict[tuple[str, int], set[str]] = {}
        for inst in healthy(insts, only_passing=only_passing):
            address = snapshot.instance_address(inst)
            version = ip_version(address) if address else 0
            if version in (4, 6):
                groups.setdefault((f"IPv{version}", inst.port or port), set()).add(address)
        slices = {}
        for (family, p), addresses in sorted(groups.items()):
            ordered = sorted(addresses)
            for chunk in range(0, len(ordered), MAX_ENDPOINTS):
                sname = f"{name}-meshdns-{family.lower()}-{p}" + (f"-{chunk // MAX_ENDPOINTS}" if chunk else "")
                slices[sname] = {
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
                    "metadata": _meta(sname, namespace, fqdn, {SERVICE_NAME_LABEL: name,
                                                               SLICE_MANAGER_LABEL: SLICE_MANAGER}),
                    "endpoints": [{"addresses": [a], "conditions": {"ready": True}}
                                  for a in ordered[chunk:chunk + MAX_ENDPOINTS]],
                    "ports": [{"name": "", "port": p, "protocol": "TCP"}] if p else [],
                }
        out[name] = Desired({"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace, fqdn),
                             "spec": spec}, slices)
    return out


def view(obj: dict | None) -> Any:
    """The fields meshdns sets, normalised, so a live object (with server defaults) compares to a manifest."""
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    ours = (tuple(sorted((k, labels.get(k)) for k in (MANAGED_BY_LABEL, SERVICE_NAME_LABEL, SLICE_MANAGER_LABEL))),
            annotations.get(SYNC_ANNOTATION), annotations.get(ORIGIN_ANNOTATION))
    if "addressType" in obj or obj.get("kind") == "EndpointSlice":
        endpoints = sorted((tuple(e.get("addresses") or ()), (e.get("conditions") or {}).get("ready") is not False)
                           for e in obj.get("endpoints") or ())
        ports = sorted(((p.get("name") or ""), p.get("port"), p.get("protocol") or "TCP")
                       for p in obj.get("ports") or ())
        return ("slice", ours, obj.get("addressType"), tuple(endpoints), tuple(ports))
    spec = obj.get("spec") or {}
    ports = sorted(((p.get("name") or ""), p.get("port"), p.get("targetPort") or p.get("port"),
                    p.get("protocol") or "TCP") for p in spec.get("ports") or ())
    return ("service", ours, _shape(spec), spec.get("externalName") or "", tuple(ports),
            tuple(sorted((spec.get("selector") or {}).items())))


def _shape(spec: dict) -> str:
    """What cannot change in place: the type, and headless or not (clusterIP is immutable)."""
    kind = spec.get("type") or "ClusterIP"
    return kind + ("/headless" if kind == "ClusterIP" and spec.get("clusterIP") == "None" else "")


@dataclass(frozen=True)
class _Kind:
    name: str
    api: str
    read: str
    create: str
    replace: str
    delete: str
    list: str


_SERVICE = _Kind("services", "CoreV1Api", "read_namespaced_service", "create_namespaced_service",
                 "replace_namespaced_service", "delete_namespaced_service", "list_namespaced_service")
_SLICE = _Kind("endpointslices", "DiscoveryV1Api", "read_namespaced_endpoint_slice",
               "create_namespaced_endpoint_slice", "replace_namespaced_endpoint_slice",
               "delete_namespaced_endpoint_slice", "list_namespaced_endpoint_slice")


class Foreign(Exception):
    """An object of that name exists and meshdns did not create it."""


class ReverseSync:
    def __init__(self, source: Any, store: Store, *, domain: str, local_datacenter: str, only_passing: bool,
                 resync_interval: float | None = None, leader: Callable[[], bool] = lambda: True):
        self.source = source
        self.leader = leader   # replicas sharing a store: only the elected one writes
        self.cluster = source.cluster
        self.store = store
        self.domain = domain
        self.local_datacenter = local_datacenter
        self.only_passing = only_passing
        self.mode = self.cluster.sync_to_kubernetes
        self.namespace = self.cluster.write_namespace
        self.resync_interval = resync_interval or max(self.cluster.watch_timeout, 1.0)
        self._apis = {k.name: getattr(client, k.api)(source.api_client) for k in (_SERVICE, _SLICE)}
        self._known: dict[tuple[str, str], dict] = {}   # (kind, name) -> our object as last seen
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._closed = asyncio.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(initial=self.cluster.backoff, cap=self.cluster.max_backoff)
        # status, read by /readyz and /metrics
        self.synced = False
        self.syncs = 0
        self.writes = 0
        self.errors = 0
        self.last_error = ""
        self.conflicts: dict[str, str] = {}

    def status(self) -> dict:
        return {"mode": self.mode, "namespace": self.namespace, "synced": self.synced, "syncs": self.syncs,
                "writes": self.writes, "errors": self.errors, "last_error": self.last_error,
                "objects": len(self._known), "conflicts": dict(self.conflicts)}

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> None:
        """Wait for the cluster's first sync (to know what is its own), then follow the catalog."""
        await self.source.synced_event.wait()
        if self._stop.is_set():
            return
        self.store.subscribe(self._on_snapshot)
        self._thread = threading.Thread(target=self._main, name=f"meshdns-reverse-{self.cluster.name}",
                                        daemon=True)
        self._thread.start()
        await self._closed.wait()

    async def close(self) -> None:
        self._closed.set()
        self.store.unsubscribe(self._on_snapshot)
        if self._stop.is_set():
            return
        self._stop.set()
        self._dirty.set()
        deadline = time.monotonic() + self.cluster.request_timeout + 1.0
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _on_snapshot(self, _snapshot: Snapshot) -> None:
        self._dirty.set()

    def wake(self) -> None:
        """Leadership changed: sync (after a relist) if this replica now leads, else stop writing."""
        self._dirty.set()

    # -- the thread ----------------------------------------------------------------

    def _main(self) -> None:
        self._dirty.set()
        next_resync = 0.0
        while not self._stop.is_set():
            self._dirty.wait(max(0.0, next_resync - time.monotonic()) if self.leader() else None)
            if self._stop.is_set():
                break
            if not self.leader():
                self._dirty.clear()
                next_resync = 0.0  # what another leader wrote meanwhile is learnt again when this one leads
                continue
            self._stop.wait(0.05)  # let a burst of catalog changes settle into one pass
            self._dirty.clear()
            try:
                if time.monotonic() >= next_resync:
                    self._relist()
                    next_resync = time.monotonic() + self.resync_interval
                self._sync_once()
                self._backoff.reset()
            except Exception as exc:
                if self._stop.is_set():
                    break
                self.errors += 1
                self.last_error = _describe(exc)
                log.warning("kubernetes cluster %s: reverse sync failed, will retry: %s",
                            self.cluster.name, self.last_error)
                next_resync = 0.0
                self._dirty.set()
                self._stop.wait(self._backoff.next())

    def _relist(self) -> None:
        """Learn (again) which objects in the namespace are ours: also repairs drift and restarts."""
        known = {}
        for kind in (_SERVICE, _SLICE):
            body = self._call(kind, kind.list, self.namespace, label_selector=SELECTOR)
            for obj in body.get("items") or ():
                if managed_by_meshdns(obj):
                    known[(kind.name, obj["metadata"]["name"])] = obj
        self._known = known

    def _sync_once(self) -> None:
        desired = desired_objects(self.store.snapshot, source=self.source.name,
                                  datacenter=self.source.settings.datacenter,
                                  local_datacenter=self.local_datacenter, domain=self.domain, mode=self.mode,
                                  namespace=self.namespace, only_passing=self.only_passing)
        conflicts = {}
        for name, want in desired.items():
            try:
                self._ensure(_SERVICE, name, want.service)
            except Foreign:
                conflicts[name] = (f"Service {self.namespace}/{name} exists and is not managed by meshdns; "
                                   "left alone")
                continue
            for sname, body in want.slices.items():
                try:
                    self._ensure(_SLICE, sname, body)
                except Foreign:
                    conflicts[sname] = (f"EndpointSlice {self.namespace}/{sname} exists and is not managed by "
                                        "meshdns; left alone")
        for kind, oname in list(self._known):
            if kind != _SLICE.name:
                continue
            owner = (self._known[(kind, oname)]["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL)
            if owner not in desired or (owner not in conflicts and oname not in desired[owner].slices):
                self._remove(_SLICE, oname)
        for kind, oname in list(self._known):
            if kind == _SERVICE.name and oname not in desired:
                self._remove(_SERVICE, oname)
        for name, message in conflicts.items():
            if self.conflicts.get(name) != message:
                log.warning("kubernetes cluster %s: %s", self.cluster.name, message)
        self.conflicts = conflicts
        self.syncs += 1
        if not self.synced:
            self.synced = True
            log.info("kubernetes cluster %s: reverse sync (%s) in namespace %s: %d services",
                     self.cluster.name, self.mode, self.namespace, len(desired))

    # -- one object ------------------------------------------------------------------

    def _ensure(self, kind: _Kind, name: str, body: dict) -> None:
        known = self._known.get((kind.name, name))
        if known is not None and view(known) == view(body):
            return
        current = self._read(kind, name)
        if current is None:
            self._known[(kind.name, name)] = self._write(kind, kind.create, self.namespace, body=body)
            return
        if not managed_by_meshdns(current):
            self._known.pop((kind.name, name), None)
            raise Foreign(name)
        if view(current) == view(body):
            self._known[(kind.name, name)] = current
            return
        if kind is _SERVICE and _shape(current.get("spec") or {}) != _shape(body["spec"]):
            self._write(kind, kind.delete, name, self.namespace)
            self._known[(kind.name, name)] = self._write(kind, kind.create, self.namespace, body=body)
            return
        update = copy.deepcopy(body)
        update["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if kind is _SERVICE:
            for key in ("clusterIP", "clusterIPs"):
                if key in (current.get("spec") or {}):
                    update["spec"][key] = current["spec"][key]
        self._known[(kind.name, name)] = self._write(kind, kind.replace, name, self.namespace, body=update)

    def _remove(self, kind: _Kind, name: str) -> None:
        current = self._read(kind, name)
        self._known.pop((kind.name, name), None)
        if current is None:
            return
        if not managed_by_meshdns(current):
            log.warning("kubernetes cluster %s: %s %s/%s is no longer managed by meshdns; left alone",
                        self.cluster.name, kind.name, self.namespace, name)
            return
        try:
            self._write(kind, kind.delete, name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _read(self, kind: _Kind, name: str) -> dict | None:
        try:
            return self._call(kind, kind.read, name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _write(self, kind: _Kind, method: str, *args: Any, **kwargs: Any) -> dict:
        result = self._call(kind, method, *args, **kwargs)
        self.writes += 1
        verb = method.split("_", 1)[0]
        log.info("kubernetes cluster %s: %s %s %s/%s", self.cluster.name, verb, kind.name, self.namespace,
                 (result.get("metadata") or {}).get("name") or args[0])
        return result

    def _call(self, kind: _Kind, method: str, *args: Any, **kwargs: Any) -> dict:
        fn = getattr(self._apis[kind.name], method)
        resp = fn(*args, _preload_content=False, _request_timeout=(self.cluster.request_timeout,
                                                                   self.cluster.request_timeout), **kwargs)
        try:
            data = resp.data
        finally:
            resp.release_conn()
        return json.loads(data) if data else {}
