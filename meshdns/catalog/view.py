"""A Snapshot read through a view that notes every key it touched.

An answer built from a view depends on exactly what the view recorded: it
stays good while each recorded entry is the same object in the current
snapshot (the Store keeps the identity of entries that did not change). What
an answer reads is recorded as it is read, so no reader can forget to declare
a dependency.
"""
from __future__ import annotations

from typing import Mapping

from .snapshot import Snapshot

Dep = tuple[str, object, object]   # (snapshot attribute, key or None for the attribute itself, object seen)


class _Recorded:
    """One of the snapshot's mappings; every get() is noted."""

    __slots__ = ("attr", "mapping", "deps")

    def __init__(self, attr: str, mapping: Mapping, deps: list[Dep]):
        self.attr, self.mapping, self.deps = attr, mapping, deps

    def get(self, key, default=None):
        value = self.mapping.get(key)
        self.deps.append((self.attr, key, value))
        return default if value is None else value


class View:
    """Reads like a Snapshot; `deps` lists what was read."""

    __slots__ = ("snap", "deps", "services", "nodes", "splits", "zones", "ip_services", "ip_nodes", "intentions",
                 "datacenter")

    def __init__(self, snap: Snapshot):
        self.snap = snap
        self.deps: list[Dep] = []
        self.datacenter = snap.datacenter   # fixed for the life of a store
        for attr in ("services", "nodes", "splits", "zones", "ip_services", "ip_nodes", "intentions"):
            setattr(self, attr, _Recorded(attr, getattr(snap, attr), self.deps))

    @property
    def version(self) -> int:
        self.deps.append(("version", None, self.snap.version))
        return self.snap.version

    @property
    def datacenters(self) -> frozenset[str]:
        self.deps.append(("datacenters", None, self.snap.datacenters))
        return self.snap.datacenters

    @property
    def queries(self) -> Mapping:
        """Prepared queries are looked up by prefix (a scan): the whole mapping is what is read."""
        self.deps.append(("queries", None, self.snap.queries))
        return self.snap.queries

    # the snapshot's own readers, reading through the recorded mappings
    instances = Snapshot.instances
    node = Snapshot.node
    instance_address = Snapshot.instance_address
    zone_for = Snapshot.zone_for


def still_valid(deps, snap: Snapshot) -> bool:
    """True while every recorded read would read the same in `snap`."""
    for attr, key, seen in deps:
        current = getattr(snap, attr) if key is None else getattr(snap, attr).get(key)
        if current is not seen and current != seen:
            return False
    return True
