"""Holds each source's last state and publishes merged snapshots.

Merge rules: a service key's instances are the concatenation over sources
(that is how one name spans VMs and pods); a node or zone comes from the first
source (by name) that has it, and so does a prepared query; a split or an
intention is the one with the newest revision (last write wins). Only keys that
changed are rebuilt.

The snapshot version (X-Consul-Index, the SOA serial) grows with every change.
Each instance and node also remembers the version at which it appeared and the
one at which it last changed (`index_of`): the CreateIndex/ModifyIndex of
entries whose source keeps no revisions of its own (zone files, Kubernetes).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from .model import Instance, Node, Revision, ServiceKey, SourceState
from .snapshot import Snapshot, ZoneIndex

log = logging.getLogger("meshdns.catalog")

Listener = Callable[[Snapshot], None]


@dataclass(frozen=True, slots=True)
class Change:
    """What one publish changed, by key (for replicas that copy the merged catalog)."""

    services: frozenset
    nodes: frozenset
    splits: frozenset
    zones: frozenset
    intentions: frozenset = frozenset()
    queries: frozenset = frozenset()


def _changed_keys(old: dict, new: dict) -> set:
    if old is new:  # a source that republishes the same dict changed nothing there
        return set()
    keys = set()
    for k, v in new.items():
        o = old.get(k)
        if o is not v and o != v:
            keys.add(k)
    keys.update(k for k in old if k not in new)
    return keys


def _identity(entry: Instance | Node) -> tuple:
    if isinstance(entry, Node):
        return ("node", entry.datacenter, entry.name.lower())
    return (entry.source, entry.datacenter, entry.node.lower(), entry.id)


def _first_wins(prev, keys, parts: list[dict], build=lambda value: value):
    """prev with `keys` taken from the first part that has them (built), or dropped; prev when no key changed."""
    if not keys:
        return prev
    out = dict(prev)
    for key in keys:
        value = next((part[key] for part in parts if key in part), None)
        if value is None:
            out.pop(key, None)
        else:
            out[key] = build(value)
    return MappingProxyType(out)


def _address_of(inst: Instance, nodes) -> str:
    if inst.address:
        return inst.address
    node = nodes.get((inst.datacenter, inst.node.lower())) if inst.node else None
    return node.address if node else ""


def _newest(prev: Mapping, names: Iterable[str], parts: list[dict]) -> Mapping:
    """Per name, the entry with the highest revision among the sources (last write wins)."""
    if not names:
        return prev
    out = dict(prev)
    for name in names:
        candidates = [part[name] for part in parts if name in part]
        if candidates:
            out[name] = max(candidates, key=lambda e: e.revision)
        else:
            out.pop(name, None)
    return MappingProxyType(out)


class Store:
    def __init__(self, *, datacenter: str):
        self._states: dict[str, SourceState] = {}
        self._listeners: list[Listener] = []
        self._change_listeners: list[Callable[[Snapshot, Change], None]] = []
        self._dc_refs: dict[str, int] = {}
        # the plain dicts behind the current snapshot's read-only views: dict.copy() of these is
        # a fast C copy, copying through a mappingproxy is not
        self._raw: dict[str, dict] = {"services": {}, "nodes": {}, "ip_services": {}, "ip_nodes": {}}
        self._indexes: dict[tuple, Revision] = {}   # instance or node identity -> (appeared, last changed)
        self._at: tuple[int, int] | None = None     # (store revision, the version its changes got)
        self.snapshot = Snapshot(datacenter=datacenter, datacenters=frozenset({datacenter}))

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def subscribe_changes(self, listener: Callable[[Snapshot, Change], None]) -> None:
        self._change_listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def state(self, source: str) -> SourceState | None:
        return self._states.get(source)

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Per source: (services, instances) it contributes."""
        return {name: (len(st.services), sum(map(len, st.services.values())))
                for name, st in sorted(self._states.items())}

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(sorted(self._states))

    def index_of(self, entry: Instance | Node) -> Revision:
        """The versions at which this instance or node appeared and last changed."""
        known = self._indexes.get(_identity(entry))
        return known if known is not None else Revision(self.snapshot.version, self.snapshot.version)

    def _version_for(self, revision: int) -> int:
        """The version of a change read from the shared store at `revision`: the revision itself, so
        X-Consul-Index is the same on every replica that applied it, unless changes of this replica's own
        sources (zone files, Kubernetes) went past it; every publish of one revision shares one version."""
        prev = self.snapshot.version
        if self._at is not None and self._at[0] == revision and self._at[1] == prev:
            return prev
        version = max(revision, prev + 1)
        self._at = (revision, version)
        return version

    def rebase(self, version: int) -> None:
        """At start, before anything was answered: the version becomes exactly `version` (the store revision
        applied), and no entry's index is above it, so replicas that read the same store and the same zone
        files start at the same X-Consul-Index whatever their local sources published while starting."""
        self._indexes = {k: Revision(min(r.create, version), min(r.mod, version)) for k, r in self._indexes.items()}
        self._at = None
        self._notify(replace(self.snapshot, version=version), Change(frozenset(), frozenset(), frozenset(),
                                                                     frozenset()))

    def advance(self, version: int) -> None:
        """Move the version up to `version` (a store revision) if it is behind, so that no entry's index is
        ahead of X-Consul-Index and the index never goes back across restarts."""
        if version > self.snapshot.version:
            self._notify(replace(self.snapshot, version=version), Change(frozenset(), frozenset(), frozenset(),
                                                                         frozenset()))

    def publish(self, source: str, state: SourceState, *, changed: Iterable[ServiceKey] | None = None,
                version: int | None = None, revision: int | None = None) -> Snapshot:
        """Replace one source's state; `changed` (service keys) skips the diff when known.

        `version` is for replicas, whose snapshots must carry the primary's version (SOA serial).
        `revision`: the state is the shared store's at that revision (see `_version_for`)."""
        if revision is not None:
            version = self._version_for(revision)
        old = self._states.get(source, SourceState())
        self._states[source] = state
        svc_keys = set(changed) if changed is not None else _changed_keys(old.services, state.services)
        node_keys = _changed_keys(old.nodes, state.nodes)
        split_names = _changed_keys(old.splits, state.splits)
        zone_names = _changed_keys(old.zones, state.zones)
        intention_names = _changed_keys(old.intentions, state.intentions)
        query_ids = _changed_keys(old.queries, state.queries)
        if not (svc_keys or node_keys or split_names or zone_names or intention_names or query_ids):
            if version is not None and revision is None:
                self.advance(version)
            return self.snapshot
        snap = self._rebuild(svc_keys, node_keys, split_names, zone_names, version, intention_names, query_ids)
        self._notify(snap, Change(frozenset(svc_keys), frozenset(node_keys), frozenset(split_names),
                                  frozenset(zone_names), frozenset(intention_names), frozenset(query_ids)))
        return snap

    def _notify(self, snap: Snapshot, change: Change) -> None:
        self.snapshot = snap
        for listener in list(self._listeners):
            try:
                listener(snap)
            except Exception:  # a broken listener must not stop the catalog
                log.exception("snapshot listener failed")
        for change_listener in list(self._change_listeners):
            try:
                change_listener(snap, change)
            except Exception:
                log.exception("change listener failed")

    def remove(self, source: str) -> Snapshot:
        return self.publish(source, SourceState())

    # -- rebuild ---------------------------------------------------------

    def _ordered_states(self) -> list[SourceState]:
        return [self._states[name] for name in sorted(self._states)]

    def _rebuild(self, svc_keys, node_keys, split_names, zone_names, version=None,
                 intention_names=frozenset(), query_ids=frozenset()) -> Snapshot:
        prev = self.snapshot
        version = prev.version + 1 if version is None else version
        states = self._ordered_states()
        raw = self._raw
        services = raw["services"].copy()
        nodes = raw["nodes"].copy() if node_keys else raw["nodes"]
        ip_services = raw["ip_services"].copy()
        ip_nodes = raw["ip_nodes"].copy() if node_keys else raw["ip_nodes"]
        self._raw = {"services": services, "nodes": nodes, "ip_services": ip_services, "ip_nodes": ip_nodes}

        touched_ips: dict[str, tuple[set, set]] = {}

        def note(mapping_index: int, ip: str, key, add: bool) -> None:
            if not ip:
                return
            adds, removes = touched_ips.setdefault((mapping_index, ip), (set(), set()))
            (adds if add else removes).add(key)

        for key in node_keys:
            old = nodes.get(key)
            new = next((st.nodes[key] for st in states if key in st.nodes), None)
            if old is not None:
                note(1, old.address, key, False)
                self._dc_ref(key[0], -1)
            if new is None:
                nodes.pop(key, None)
                self._indexes.pop(("node", *key), None)
            else:
                nodes[key] = new
                note(1, new.address, key, True)
                self._dc_ref(key[0], +1)
                self._note_index(old, new, version)
        # instances that rely on a changed node's address move with it
        if node_keys:
            node_names = {k for k in node_keys}
            for skey, insts in prev.services.items():
                if any(not i.address and (i.datacenter, i.node.lower()) in node_names for i in insts):
                    svc_keys.add(skey)

        gone: set[tuple] = set()
        arrived: set[tuple] = set()
        for key in svc_keys:
            old = prev.services.get(key, ())
            merged: tuple[Instance, ...] = ()
            for st in states:
                part = st.services.get(key)
                if part:
                    merged = merged + tuple(part)
            if old or merged:
                self._note_indexes(old, merged, version, gone, arrived)
            for inst in old:
                note(0, _address_of(inst, prev.nodes), key, False)
            if old:
                self._dc_ref(key[0], -1)
            if merged:
                services[key] = merged
                self._dc_ref(key[0], +1)
                for inst in merged:
                    note(0, _address_of(inst, nodes), key, True)
            else:
                services.pop(key, None)

        for identity in gone - arrived:   # an instance that moved to another service key keeps its index
            self._indexes.pop(identity, None)

        for (which, ip), (adds, removes) in touched_ips.items():
            index = ip_services if which == 0 else ip_nodes
            current = set(index.get(ip, ()))
            current -= removes - adds
            current |= adds
            # a key removed here may still hold that IP through another instance
            if which == 0:
                current = {k for k in current if any(_address_of(i, nodes) == ip for i in services.get(k, ()))}
            else:
                current = {k for k in current if k in nodes and nodes[k].address == ip}
            if current:
                index[ip] = frozenset(current)
            else:
                index.pop(ip, None)

        splits = _newest(prev.splits, split_names, [st.splits for st in states])
        intentions = _newest(prev.intentions, intention_names, [st.intentions for st in states])

        zones = _first_wins(prev.zones, zone_names, [st.zones for st in states], ZoneIndex.build)
        queries = _first_wins(prev.queries, query_ids, [st.queries for st in states])

        dcs = frozenset(dc for dc, n in self._dc_refs.items() if n > 0) | {prev.datacenter}
        return Snapshot(
            version=version,
            datacenter=prev.datacenter,
            services=MappingProxyType(services),
            nodes=MappingProxyType(nodes) if node_keys else prev.nodes,
            splits=splits,
            zones=zones,
            ip_services=MappingProxyType(ip_services),
            ip_nodes=MappingProxyType(ip_nodes) if node_keys else prev.ip_nodes,
            datacenters=dcs if dcs != prev.datacenters else prev.datacenters,
            intentions=intentions,
            queries=queries,
        )

    def _note_index(self, old: Instance | Node | None, new: Instance | Node, version: int) -> None:
        identity = _identity(new)
        known = self._indexes.get(identity)
        if known is None:
            self._indexes[identity] = Revision(version, version)
        elif old is None or (old is not new and old != new):
            self._indexes[identity] = Revision(known.create, version)

    def _note_indexes(self, old: tuple[Instance, ...], merged: tuple[Instance, ...], version: int,
                      gone: set, arrived: set) -> None:
        """Index the instances of one changed service key, noting which identities left it and arrived."""
        before = {_identity(i): i for i in old}
        for inst in merged:
            identity = _identity(inst)
            arrived.add(identity)
            self._note_index(before.pop(identity, None), inst, version)
        gone.update(before)

    def _dc_ref(self, dc: str, delta: int) -> None:
        self._dc_refs[dc] = self._dc_refs.get(dc, 0) + delta
